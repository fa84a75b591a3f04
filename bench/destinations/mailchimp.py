"""Mailchimp at its limit: members per second through batch subscribe, as a share of what the limit
allows.

Mailchimp's rule is 10 concurrent connections per API key, no per-minute quota, and at most 500
members a batch request. So the ceiling is 10 connections times 500 members ÷ a request's latency.
Here the test fake answers every request after a set latency (it runs in a process of its own, so
its work does not slow syncback's requests down), refuses an 11th connection with a 429, and
syncback delivers 10 batches side by side (``concurrency: 10``, the most the spec allows). Every
member is new, so each request is one batch of 500 (an existing member costs one more request of
its own, not measured here). The figure is members/s from the first request to the last answer ÷
the ceiling, with the 429s the fake sent and the most connections it saw at once.

Two latencies: 2 s, about what a batch of 500 takes at Mailchimp (an assumption: the reference
gives no figure), where the limit binds (target ≥ 0.9); and 0.5 s, where the ceiling (10,000
members/s) is above what one Python process builds and reads (its CPU per record binds: no target).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _harness import FirstSync, OwnProcess, first_sync, ratio_rows, serve

from tests.fakes.mailchimp import KEY, LIST, MailchimpFake

CONNECTIONS, PER_REQUEST = 10, 500
#: (latency, members): 10 batches, one for each of the 10 deliverers, of 10 or 20 requests
RUNS = ((2.0, 50_000), (0.5, 100_000))


def at_the_limit(concurrency: int, latency_s: float, members: int) -> dict[str, Any]:
    ceiling = CONNECTIONS * PER_REQUEST / latency_s
    with OwnProcess(__file__, str(latency_s)) as fake:
        sync = {
            "name": "members",
            "batch_size": members // concurrency,
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
        run: FirstSync = first_sync(f"mailchimp-{concurrency}", sync, members, {"BENCH_MAILCHIMP_KEY": KEY})
        counts = fake.counts()
    assert run.record.delivered == members, run.record
    return {
        "concurrency": concurrency,
        "latency_s": latency_s,
        "members": members,
        "ceiling": ceiling,
        "members_per_s": members / run.delivering_s,
        "wall_s": run.wall_s,
        "of_ceiling": members / run.delivering_s / ceiling,
        "requests": counts["requests"],
        "rate_limited": counts["429"],
        "most_connections": counts["most_connections"],
        "created": counts["created"],
    }


def main() -> None:
    runs = [at_the_limit(CONNECTIONS, latency, members) for latency, members in RUNS]
    rows = []
    for run in runs:
        what = (
            f"Mailchimp at its limit ({CONNECTIONS} connections, {run['latency_s']:g} s a request, "
            f"≤ {PER_REQUEST} members a request), {run['concurrency']} deliverers"
        )
        if run is runs[0]:
            rows += ratio_rows(what, "members/s", run["of_ceiling"], run["rate_limited"])
        else:  # above what one process can build: a measure of syncback's CPU, not of the limit
            rows += [
                [f"{what}: members/s ÷ limit (not a target)", f"{run['of_ceiling']:.3f}", "—", "—"],
                [
                    f"{what}: 429s",
                    str(run["rate_limited"]),
                    "0",
                    "yes" if run["rate_limited"] == 0 else "**no**",
                ],
            ]
    note = (
        "; ".join(
            f"{r['latency_s']:g} s a request: {r['members']:,} new members in {r['requests']:,} requests, at most "
            f"{r['most_connections']} connections at once, {r['members_per_s']:,.0f} members/s of a ceiling of "
            f"{r['ceiling']:,.0f}, whole run {r['wall_s']:.1f} s"
            for r in runs
        )
        + ". Members that exist cost one PUT each after their batch (their status is never sent), so an "
        "update-heavy run is bound by 10 ÷ latency members/s."
    )
    print(json.dumps({"rows": rows, "note": note}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(
            MailchimpFake(max_connections=CONNECTIONS, latency_s=float(sys.argv[2])), lambda fake: fake.counts
        )
    else:
        main()
