"""Intercom at its limit: contacts per second, one request each, as a share of what the limit allows.

Intercom documents 10,000 calls a minute per private app, spread over 10-second windows (1,666 a
10 s), one contact a request, and answers with X-RateLimit-Remaining and -Reset. Scaled down so a
run takes ~15 s: the fake allows 80 requests per fixed 2 s window (the spec declares 80 per
rolling 2 s), and answers 429 past it. The ceiling is 40 contacts/s; the figure is contacts/s from
the first request to the last answer ÷ that ceiling, with the 429s the fake sent (none expected).
The fake runs in a process of its own, so its work does not slow syncback's requests down.
"""

from __future__ import annotations

import sys
from typing import Any

from _harness import FirstSync, OwnProcess, at_the_limit, first_sync, report, serve

from tests.fakes.intercom import TOKEN, IntercomFake

REQUESTS, WINDOW_S, USERS, PER_REQUEST = 80, 2.0, 600, 1
CEILING = REQUESTS * PER_REQUEST / WINDOW_S


def limit_run(concurrency: int) -> dict[str, Any]:
    with OwnProcess(__file__) as fake:
        sync = {
            "name": "users",
            "batch_size": 25,
            "destination": {
                "type": "intercom",
                "base_url": fake.url,
                "access_token": "env:BENCH_INTERCOM_TOKEN",
                "rate_limit": {"requests": REQUESTS, "per_seconds": WINDOW_S},
                "concurrency": concurrency,
            },
            "mapping": {
                "external_id": "customer_id",
                "name": "first_name",
                "email": "email",
                "custom_attributes.health_score": "lead_score",
            },
        }
        run: FirstSync = first_sync(f"intercom-{concurrency}", sync, USERS, {"BENCH_INTERCOM_TOKEN": TOKEN})
        counts = fake.counts()
    return at_the_limit(concurrency, run, counts, USERS, CEILING)


def main() -> None:
    report(
        [limit_run(c) for c in (4, 16)],
        lambda c: (
            f"Intercom at its limit ({REQUESTS} requests/{WINDOW_S:g} s scaled, 1 contact a request), {c} deliverer(s)"
        ),
        "contacts/s",
        f"{USERS:,} contacts in {USERS // PER_REQUEST:,} requests",
        "The limit is Intercom's 1,666 requests per 10 s scaled to 80 per 2 s; with one request a "
        "contact, throughput below the limit is concurrency ÷ latency.",
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(
            IntercomFake(requests_per_window=REQUESTS, window_s=WINDOW_S),
            lambda fake: {**fake.counts, "users": len(fake.contacts)},
        )
    else:
        main()
