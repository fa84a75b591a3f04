"""Google audiences at the Data Manager API's limits: members per second through
audienceMembers:ingest, as a share of what the limits allow.

Google documents at most 10,000 audience members a request and, per Google Cloud project, 300
requests a minute (and 100,000 a day), answering past them 429 RESOURCE_EXHAUSTED
(developers.google.com/data-manager/api/limits). Requests carry the documented 10,000 members; the
rate is scaled down so a run takes ~15 s: the fake allows 5 requests per fixed 5 s window (the spec
declares 5 per rolling 5 s) and answers 429 past it. The ceiling is 10,000 members/s; the figure is
members/s from the first request to the last answer ÷ that ceiling, with the 429s the fake sent
(none expected: the budget keeps under the limit). With only three windows the figure reads above
1: the span ends at the last window's answers, before the wait that window would impose. Every
member's e-mail is normalised and hashed in the warehouse, as in production. Batches are 10,000
changes, one request each: at 20,000 the commit of the receipts (about 5 MB each) ran out of
DuckDB's 256 MB memory limit here. The fake runs in a
process of its own, so its work does not slow syncback's requests down.
"""

from __future__ import annotations

import sys
from typing import Any

from _harness import FirstSync, OwnProcess, at_the_limit, first_sync, report, serve

from tests.fakes.google_audience import TOKEN, USER_LIST, GoogleAudienceFake

REQUESTS, WINDOW_S, USERS, PER_REQUEST = 5, 5.0, 150_000, 10_000
CEILING = REQUESTS * PER_REQUEST / WINDOW_S


def limit_run(concurrency: int) -> dict[str, Any]:
    with OwnProcess(__file__) as fake:
        sync = {
            "name": "users",
            "batch_size": 10_000,
            "destination": {
                "type": "google_audience",
                "operating_account_id": "1234567890",
                "user_list_id": USER_LIST,
                "base_url": fake.url,
                "access_token": "env:BENCH_GOOGLE_TOKEN",
                "consent": {"ad_user_data": "granted", "ad_personalization": "granted"},
                "customer_match_terms_accepted": True,
                "rate_limit": {"requests": REQUESTS, "per_seconds": WINDOW_S},
                "concurrency": concurrency,
            },
            "mapping": {"email": "email"},
        }
        run: FirstSync = first_sync(
            f"google-audience-{concurrency}", sync, USERS, {"BENCH_GOOGLE_TOKEN": TOKEN}
        )
        counts = fake.counts()
    return at_the_limit(concurrency, run, counts, USERS, CEILING)


def main() -> None:
    report(
        [limit_run(c) for c in (1, 4)],
        lambda c: (
            f"Google audiences (Data Manager) at its limit ({REQUESTS} requests per {WINDOW_S:g} s scaled, "
            f"10,000 members a request), {c} deliverer(s)"
        ),
        "members/s (10,000 members a request)",
        f"{USERS:,} members in {USERS // PER_REQUEST:,} requests",
        "Google's 300 requests a minute per Cloud project scaled to 5 per 5 s, each request at "
        "the documented 10,000 members; e-mails normalised and hashed in the warehouse.",
        "429 RESOURCE_EXHAUSTED",
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(
            GoogleAudienceFake(requests_per_window=REQUESTS, window_s=WINDOW_S),
            lambda fake: {**fake.counts, "users": len(fake.members())},
        )
    else:
        main()
