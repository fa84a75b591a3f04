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
from tests.fakes.meta_audience import AUDIENCE, TOKEN, MetaAudienceFake  # noqa: E402

REQUESTS, WINDOW_S, USERS, PER_REQUEST = 5, 5.0, 150_000, 10_000
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
    with MetaAudienceFake(requests_per_window=REQUESTS, window_s=WINDOW_S) as fake:
        print(fake.url, flush=True)
        sys.stdin.read()
        print(json.dumps({**fake.counts, "users": len(fake.members)}), flush=True)


def at_the_limit(concurrency: int) -> dict[str, Any]:
    root = ROOT / "bench" / "work" / f"meta-audience-{concurrency}"
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
        (root / "syncs" / "users.yaml").write_text(yaml.safe_dump(sync))
        write_contacts(root / "wh.duckdb", contacts_rows(USERS))
        os.environ["BENCH_META_TOKEN"] = TOKEN
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
    runs = [at_the_limit(c) for c in (1, 4)]
    rows = []
    for run in runs:
        what = (
            f"Meta Custom Audiences at its limit ({REQUESTS} requests per {WINDOW_S:g} s scaled, 10,000 members a request), "
            f"{run['concurrency']} deliverer(s)"
        )
        rows += [
            [
                f"{what}: members/s ÷ limit (10,000 members a request)",
                f"{run['of_ceiling']:.3f}",
                "≥ 0.9",
                "yes" if run["of_ceiling"] >= 0.9 else "**no**",
            ],
            [
                f"{what}: throttles",
                str(run["rate_limited"]),
                "0",
                "yes" if run["rate_limited"] == 0 else "**no**",
            ],
        ]
    note = (
        f"{USERS:,} members in {USERS // PER_REQUEST:,} requests; requests the fake saw: "
        + ", ".join(f"{r['concurrency']} deliverer(s) {r['requests']:,}" for r in runs)
        + "; whole runs "
        + ", ".join(f"{r['wall_s']:.1f} s" for r in runs)
        + ". Meta's custom_audience limit (calls per ad account an hour) scaled to 5 per 5 s, each "
        "request at the documented 10,000 rows; members' keys hashed in the warehouse."
    )
    print(json.dumps({"rows": rows, "note": note}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    else:
        main()
