"""Braze at its limit: users per second through /users/track, as a share of what the limit allows.

Braze documents 3,000 /users/track requests per 3 s and 75 attributes objects a request, and
answers every request with X-RateLimit-Remaining and -Reset. Scaled down so a run takes ~15 s:
the test fake allows 60 requests per fixed 1 s window (the spec declares 60 per rolling second),
and answers 429 past it. The ceiling is what the limit allows if every request carried 75 users
(4,500 users/s); the figure is users/s from the first request to the last answer ÷ that ceiling,
with the 429s the fake sent (none expected: the budget keeps under the limit, and an answer
saying none remain holds the client until the reset). The fake runs in a process of its own, so
its work does not slow syncback's requests down.
"""

from __future__ import annotations

import sys
from typing import Any

from _harness import FirstSync, OwnProcess, at_the_limit, first_sync, report, serve

from tests.fakes.braze import KEY, BrazeFake

REQUESTS, WINDOW_S, USERS, PER_REQUEST = 60, 1.0, 60_000, 75
CEILING = REQUESTS * PER_REQUEST / WINDOW_S


def limit_run(concurrency: int) -> dict[str, Any]:
    with OwnProcess(__file__) as fake:
        sync = {
            "name": "users",
            "batch_size": 3_000,
            "destination": {
                "type": "braze",
                "rest_endpoint": "rest.iad-01.braze.com",
                "base_url": fake.url,
                "api_key": "env:BENCH_BRAZE_KEY",
                "rate_limit": {"requests": REQUESTS, "per_seconds": WINDOW_S},
                "concurrency": concurrency,
            },
            "mapping": {
                "external_id": "customer_id",
                "first_name": "first_name",
                "email": "email",
                "churn_risk": "lead_score",
            },
        }
        run: FirstSync = first_sync(f"braze-{concurrency}", sync, USERS, {"BENCH_BRAZE_KEY": KEY})
        counts = fake.counts()
    return at_the_limit(concurrency, run, counts, USERS, CEILING)


def main() -> None:
    report(
        [limit_run(c) for c in (1, 4)],
        lambda c: f"Braze at its limit ({REQUESTS} requests/s scaled, 75 users a request), {c} deliverer(s)",
        "users/s (75 users a request)",
        f"{USERS:,} users in {USERS // PER_REQUEST:,} requests",
        "The limit is Braze's 3,000 requests per 3 s scaled to 60 per 1 s; one deliverer is bound "
        "by the time a request takes (1 ÷ its latency), not by the limit.",
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(
            BrazeFake(requests_per_window=REQUESTS, window_s=WINDOW_S),
            lambda fake: {**fake.counts, "users": len(fake.users)},
        )
    else:
        main()
