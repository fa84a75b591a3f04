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
from tests.fakes.google_audience import TOKEN, USER_LIST, GoogleAudienceFake  # noqa: E402

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
    with GoogleAudienceFake(requests_per_window=REQUESTS, window_s=WINDOW_S) as fake:
        print(fake.url, flush=True)
        sys.stdin.read()
        print(json.dumps({**fake.counts, "users": len(fake.members())}), flush=True)


def at_the_limit(concurrency: int) -> dict[str, Any]:
    root = ROOT / "bench" / "work" / f"google-audience-{concurrency}"
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
        (root / "syncs" / "users.yaml").write_text(yaml.safe_dump(sync))
        write_contacts(root / "wh.duckdb", contacts_rows(USERS))
        os.environ["BENCH_GOOGLE_TOKEN"] = TOKEN
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
            f"Google audiences (Data Manager) at its limit ({REQUESTS} requests per {WINDOW_S:g} s scaled, "
            "10,000 members a request), "
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
                f"{what}: 429 RESOURCE_EXHAUSTED",
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
        + ". Google's 300 requests a minute per Cloud project scaled to 5 per 5 s, each request at "
        "the documented 10,000 members; e-mails normalised and hashed in the warehouse."
    )
    print(json.dumps({"rows": rows, "note": note}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    else:
        main()
