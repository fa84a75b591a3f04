"""Mailchimp at its limit: members per second through batch subscribe, as a share of what the limit
allows.

Mailchimp's rule is 10 concurrent connections per API key, no per-minute quota, and at most 500
members a batch request. So the ceiling is 10 connections times 500 members per request latency. Here the test fake
answers every request after ``LATENCY_S`` (it runs in a process of its own, so its work does not
slow syncback's requests down), refuses an 11th connection with a 429, and syncback delivers 10
batches side by side (``concurrency: 10``, the most the spec allows). Every member is new, so each
request is one batch of 500 (an existing member costs one more request of its own, not measured
here). The figure is members/s from the first request to the last answer ÷ the ceiling, with the
429s the fake sent and the most connections it saw at once.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _harness import FirstSync, OwnProcess, first_sync, ratio_rows, serve

from tests.fakes.mailchimp import KEY, LIST, MailchimpFake

CONNECTIONS, LATENCY_S, MEMBERS, PER_REQUEST = 10, 0.5, 100_000, 500
BATCH = 10_000  # 10 batches of 20 requests: one for each of the 10 deliverers
CEILING = CONNECTIONS * PER_REQUEST / LATENCY_S


def at_the_limit(concurrency: int) -> dict[str, Any]:
    with OwnProcess(__file__) as fake:
        sync = {
            "name": "members",
            "batch_size": BATCH,
            "destination": {
                "type": "mailchimp",
                "list_id": LIST,
                "api_key": "env:BENCH_MAILCHIMP_KEY",
                "status_for_new": "pending",
                "base_url": fake.url,
                "concurrency": concurrency,
            },
            "mapping": {
                "email_address": "email",
                "merge_fields.FNAME": "first_name",
                "merge_fields.SCORE": "lead_score",
            },
        }
        run: FirstSync = first_sync(f"mailchimp-{concurrency}", sync, MEMBERS, {"BENCH_MAILCHIMP_KEY": KEY})
        counts = fake.counts()
    assert run.record.delivered == MEMBERS, run.record
    return {
        "concurrency": concurrency,
        "wall_s": run.wall_s,
        "of_ceiling": MEMBERS / run.delivering_s / CEILING,
        "requests": counts["requests"],
        "rate_limited": counts["429"],
        "most_connections": counts["most_connections"],
        "created": counts["created"],
    }


def main() -> None:
    run = at_the_limit(CONNECTIONS)
    what = (
        f"Mailchimp at its limit ({CONNECTIONS} connections, {LATENCY_S:g} s a request, ≤ {PER_REQUEST} "
        f"members a request), {run['concurrency']} deliverers"
    )
    rows = ratio_rows(what, "members/s", run["of_ceiling"], run["rate_limited"])
    note = (
        f"{MEMBERS:,} new members in {run['requests']:,} requests, at most {run['most_connections']} "
        f"connections at once; whole run {run['wall_s']:.1f} s. The ceiling is {CEILING:,.0f} members/s "
        "(10 × 500 ÷ the fake's latency). Members that exist cost one PUT each after their batch "
        "(their status is never sent), so an update-heavy run is bound by 10 ÷ latency members/s."
    )
    print(json.dumps({"rows": rows, "note": note}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(MailchimpFake(max_connections=CONNECTIONS, latency_s=LATENCY_S), lambda fake: fake.counts)
    else:
        main()
