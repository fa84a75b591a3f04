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
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from syncback.batches import LocalBatchStore  # noqa: E402
from syncback.runner import Progress, run_sync  # noqa: E402
from syncback.runtime import Runtime  # noqa: E402
from syncback.spec import load_project  # noqa: E402
from syncback.state import LocalStateStore  # noqa: E402
from tests.conftest import contacts_rows, write_contacts  # noqa: E402
from tests.fakes.zendesk import EMAIL, TOKEN, ZendeskFake  # noqa: E402

REQUESTS, WINDOW_S, USERS = 40, 1.0, 60_000
POLL_S = 0.25  # a little over a job's 0.2 s: set poll_s to how long your jobs take
CEILING = REQUESTS * 100 / WINDOW_S


class Clock(Progress):
    """Notes when delivery started and when the last job's results came."""

    def __init__(self) -> None:
        self.started = self.last = 0.0

    def start(self, total: int) -> None:
        self.started = time.perf_counter()

    def advance(self, n: int) -> None:
        if n:
            self.last = time.perf_counter()


class OwnProcess:
    """The fake in a process of its own (its CPU is not syncback's): its URL, then its counts."""

    def __enter__(self) -> OwnProcess:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.process.kill()

    def counts(self) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()  # the fake prints its counts when its input ends
        return dict(json.loads(self.process.stdout.readline()))


def serve() -> None:
    with ZendeskFake(requests_per_minute=REQUESTS, window_s=WINDOW_S, job_s=0.1) as fake:
        print(fake.url, flush=True)
        sys.stdin.read()
        print(json.dumps(fake.counts), flush=True)


def at_the_limit(concurrency: int) -> dict[str, Any]:
    root = ROOT / "bench" / "work" / f"zendesk-{concurrency}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "syncs").mkdir(parents=True)
    with OwnProcess() as fake:
        (root / "syncback.yaml").write_text(
            yaml.safe_dump(
                {
                    "warehouses": {"local": {"type": "duckdb", "path": "wh.duckdb"}},
                    "state": {"warehouse": "local"},
                }
            )
        )
        sync = {
            "name": "users",
            "warehouse": "local",
            "table": "analytics.contacts",
            "primary_key": "customer_id",
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
        (root / "syncs" / "users.yaml").write_text(yaml.safe_dump(sync))
        write_contacts(root / "wh.duckdb", contacts_rows(USERS))
        os.environ["BENCH_ZENDESK_TOKEN"] = TOKEN
        project = load_project(root)
        rt = Runtime(project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path))
        clock = Clock()
        started = time.perf_counter()
        record = run_sync(rt, "users", progress=clock)
        wall = time.perf_counter() - started
        counts = fake.counts()
    assert record.delivered == USERS, record
    return {
        "concurrency": concurrency,
        "wall_s": wall,
        "of_ceiling": USERS / (clock.last - clock.started) / CEILING,
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
        rows += [
            [
                f"{what}: users/s ÷ limit (100 users a request)",
                f"{run['of_ceiling']:.3f}",
                "≥ 0.9",
                "yes" if run["of_ceiling"] >= 0.9 else "**no**",
            ],
            [f"{what}: 429s", str(run["rate_limited"]), "0", "yes" if run["rate_limited"] == 0 else "**no**"],
        ]
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
        serve()
    else:
        main()
