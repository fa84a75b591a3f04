"""Intercom at its limit: contacts per second, one request each, as a share of what the limit allows.

Intercom documents 10,000 calls a minute per private app, spread over 10-second windows (1,666 a
10 s), one contact a request, and answers with X-RateLimit-Remaining and -Reset. Scaled down so a
run takes ~15 s: the fake allows 80 requests per fixed 2 s window (the spec declares 80 per
rolling 2 s), and answers 429 past it. The ceiling is 40 contacts/s; the figure is contacts/s from
the first request to the last answer ÷ that ceiling, with the 429s the fake sent (none expected).
The fake runs in a process of its own, so its work does not slow syncback's requests down.
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
from tests.fakes.intercom import TOKEN, IntercomFake  # noqa: E402

REQUESTS, WINDOW_S, USERS, PER_REQUEST = 80, 2.0, 600, 1
CEILING = REQUESTS * PER_REQUEST / WINDOW_S


class Clock(Progress):
    """Notes when delivery started and when the last answer came."""

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
    with IntercomFake(requests_per_window=REQUESTS, window_s=WINDOW_S) as fake:
        print(fake.url, flush=True)
        sys.stdin.read()
        print(json.dumps({**fake.counts, "users": len(fake.contacts)}), flush=True)


def at_the_limit(concurrency: int) -> dict[str, Any]:
    root = ROOT / "bench" / "work" / f"intercom-{concurrency}"
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
        (root / "syncs" / "users.yaml").write_text(yaml.safe_dump(sync))
        write_contacts(root / "wh.duckdb", contacts_rows(USERS))
        os.environ["BENCH_INTERCOM_TOKEN"] = TOKEN
        project = load_project(root)
        rt = Runtime(project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path))
        clock = Clock()
        started = time.perf_counter()
        record = run_sync(rt, "users", progress=clock)
        wall = time.perf_counter() - started
        counts = fake.counts()
    assert record.delivered == USERS == counts["users"], (record, counts)
    return {
        "concurrency": concurrency,
        "wall_s": wall,
        "of_ceiling": USERS / (clock.last - clock.started) / CEILING,
        "requests": counts["requests"],
        "rate_limited": counts["429"],
    }


def main() -> None:
    runs = [at_the_limit(c) for c in (4, 16)]
    rows = []
    for run in runs:
        what = f"Intercom at its limit ({REQUESTS} requests/{WINDOW_S:g} s scaled, 1 contact a request), {run['concurrency']} deliverer(s)"
        rows += [
            [
                f"{what}: contacts/s ÷ limit",
                f"{run['of_ceiling']:.3f}",
                "≥ 0.9",
                "yes" if run["of_ceiling"] >= 0.9 else "**no**",
            ],
            [f"{what}: 429s", str(run["rate_limited"]), "0", "yes" if run["rate_limited"] == 0 else "**no**"],
        ]
    note = (
        f"{USERS:,} contacts in {USERS // PER_REQUEST:,} requests; requests the fake saw: "
        + ", ".join(f"{r['concurrency']} deliverer(s) {r['requests']:,}" for r in runs)
        + "; whole runs "
        + ", ".join(f"{r['wall_s']:.1f} s" for r in runs)
        + ". The limit is Intercom's 1,666 requests per 10 s scaled to 80 per 2 s; with one request a "
        "contact, throughput below the limit is concurrency ÷ latency."
    )
    print(json.dumps({"rows": rows, "note": note}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    else:
        main()
