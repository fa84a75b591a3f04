"""Zendesk at its limit: users per second through jobs, as a share of what the limit allows.

Zendesk's rule is N requests a minute (400 on Professional), 100 users a job and 30 jobs queued
or running at once; every poll of the jobs costs a request too. Scaled down so a run takes ~20 s:
the test fake allows 40 requests per rolling 1 s window (the spec declares the same), each job
queues for 0.1 s and works for 0.1 s, and syncback polls every 0.25 s. The fake runs in a process
of its own, so its work does not slow syncback's requests down. The ceiling is what the
limit allows if every request created 100 users (4,000 users/s); polls make it unreachable, so
the figure is users/s from the first request to the last job's results ÷ that ceiling, with the
share of requests that polled, and the 429s the fake sent (for the rate or for a full job queue).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _harness import FirstSync, OwnProcess, first_sync, ratio_rows, serve

from tests.fakes.zendesk import EMAIL, TOKEN, ZendeskFake

REQUESTS, WINDOW_S, USERS = 40, 1.0, 60_000
POLL_S = 0.25  # a little over a job's 0.2 s: set poll_s to how long your jobs take
CEILING = REQUESTS * 100 / WINDOW_S


def at_the_limit(concurrency: int) -> dict[str, Any]:
    with OwnProcess(__file__) as fake:
        sync = {
            "name": "users",
            "batch_size": 3_000,
            "destination": {
                "type": "zendesk",
                "subdomain": "bench",
                "base_url": fake.url,
                "email": EMAIL,
                "api_token": "env:BENCH_ZENDESK_TOKEN",
                "rate_limit": {"requests": REQUESTS, "per_seconds": WINDOW_S},
                "concurrency": concurrency,
                "poll_s": POLL_S,
            },
            "mapping": {
                "external_id": "customer_id",
                "name": "first_name",
                "email": "email",
                "user_fields.score": "lead_score",
            },
        }
        run: FirstSync = first_sync(f"zendesk-{concurrency}", sync, USERS, {"BENCH_ZENDESK_TOKEN": TOKEN})
        counts = fake.counts()
    assert run.record.delivered == USERS, run.record
    return {
        "concurrency": concurrency,
        "wall_s": run.wall_s,
        "of_ceiling": USERS / run.delivering_s / CEILING,
        "requests": counts["requests"],
        "polls_share": 1 - counts["jobs"] / counts["requests"],
        "rate_limited": counts["429"],
        "created": counts["created"],
    }


def main() -> None:
    runs = [at_the_limit(c) for c in (1, 4)]
    rows = []
    for run in runs:
        what = f"Zendesk at its limit ({REQUESTS} requests/s scaled, ≤ 100 users a job), {run['concurrency']} deliverer(s)"
        rows += ratio_rows(what, "users/s (100 users a request)", run["of_ceiling"], run["rate_limited"])
    note = (
        f"{USERS:,} users; requests that polled jobs: "
        + ", ".join(
            f"{r['concurrency']} deliverer(s) {r['polls_share']:.0%} of {r['requests']:,}" for r in runs
        )
        + "; whole runs "
        + ", ".join(f"{r['wall_s']:.1f} s" for r in runs)
        + ". A poll costs a request and creates nobody. One pool of jobs serves the whole sync: the "
        "next batch is opened while the last jobs of the one before run; the deliverers submit jobs "
        "side by side, so one deliverer is bound by the time a request takes (1 ÷ its latency), "
        "not by the limit."
    )
    print(json.dumps({"rows": rows, "note": note}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(
            ZendeskFake(requests_per_minute=REQUESTS, window_s=WINDOW_S, job_s=0.1), lambda fake: fake.counts
        )
    else:
        main()
