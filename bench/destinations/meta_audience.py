"""Meta Custom Audiences at its limit: members per second through /{audience_id}/users, as a share
of what the limit allows.

Meta documents at most 10,000 rows a request and, for the custom_audience use case, a number of
calls per ad account an hour (5,000 on the development tier, 190,000 or more on the standard
tier), answering a throttle with code 80003 or 17. Requests carry the documented 10,000 rows; the
rate is scaled down so a run takes ~15 s: the fake allows 5 requests per fixed 5 s window (the
spec declares 5 per rolling 5 s) and throttles past it. A window of seconds, not one, because the
budget counts a request again from its answer, and a request of 10,000 rows takes a noticeable
share of a second to build and answer. The ceiling is 10,000 members/s; the
figure is members/s from the first request to the last answer ÷ that ceiling, with the throttles
the fake sent (none expected: the budget keeps under the limit). With only three windows the
figure reads above 1: the span ends at the last window's answers, before the wait that window
would impose, so it counts the last burst without its window. Every member's e-mail, external
id and first name are hashed in the warehouse, as in production. The fake runs in a process of its
own, so its work does not slow syncback's requests down.
"""

from __future__ import annotations

import sys
from typing import Any

from _harness import FirstSync, OwnProcess, at_the_limit, first_sync, report, serve

from tests.fakes.meta_audience import AUDIENCE, TOKEN, MetaAudienceFake

REQUESTS, WINDOW_S, USERS, PER_REQUEST = 5, 5.0, 150_000, 10_000
CEILING = REQUESTS * PER_REQUEST / WINDOW_S


def limit_run(concurrency: int) -> dict[str, Any]:
    with OwnProcess(__file__) as fake:
        sync = {
            "name": "users",
            "batch_size": 20_000,
            "destination": {
                "type": "meta_audience",
                "audience_id": AUDIENCE,
                "base_url": fake.url,
                "access_token": "env:BENCH_META_TOKEN",
                "rate_limit": {"requests": REQUESTS, "per_seconds": WINDOW_S},
                "concurrency": concurrency,
            },
            "mapping": {"EMAIL": "email", "EXTERN_ID": "customer_id", "FN": "first_name"},
        }
        run: FirstSync = first_sync(f"meta-audience-{concurrency}", sync, USERS, {"BENCH_META_TOKEN": TOKEN})
        counts = fake.counts()
    return at_the_limit(concurrency, run, counts, USERS, CEILING)


def main() -> None:
    report(
        [limit_run(c) for c in (1, 4)],
        lambda c: (
            f"Meta Custom Audiences at its limit ({REQUESTS} requests per {WINDOW_S:g} s scaled, "
            f"10,000 members a request), {c} deliverer(s)"
        ),
        "members/s (10,000 members a request)",
        f"{USERS:,} members in {USERS // PER_REQUEST:,} requests",
        "Meta's custom_audience limit (calls per ad account an hour) scaled to 5 per 5 s, each "
        "request at the documented 10,000 rows; members' keys hashed in the warehouse.",
        "throttles",
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(
            MetaAudienceFake(requests_per_window=REQUESTS, window_s=WINDOW_S),
            lambda fake: {**fake.counts, "users": len(fake.members)},
        )
    else:
        main()
