"""What the destination benches share: the fake in a process of its own (its CPU is not
syncback's), a clock on delivery, and one first sync of seeded contacts through the engine.

A bench script serves its fake when run with ``--serve`` (``serve``), and measures otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from syncback.batches import LocalBatchStore  # noqa: E402
from syncback.runner import Progress, run_sync  # noqa: E402
from syncback.runtime import Runtime  # noqa: E402
from syncback.spec import load_project  # noqa: E402
from syncback.state import LocalStateStore, RunRecord  # noqa: E402
from tests.conftest import contacts_rows, write_contacts  # noqa: E402


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
    """The fake ``script --serve *args`` starts, in a process of its own: its URL, then its counts."""

    def __init__(self, script: str, *args: str) -> None:
        self.command = [sys.executable, script, "--serve", *args]

    def __enter__(self) -> OwnProcess:
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.process.kill()

    def counts(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()  # the fake prints its counts when its input ends
        return dict(json.loads(self.process.stdout.readline()))


def serve(fake: AbstractContextManager[Any], counts: Any) -> None:
    """Run ``fake`` until this process's input ends: print its URL, then ``counts(fake)`` as JSON."""
    with fake as running:
        print(running.url, flush=True)
        sys.stdin.read()
        print(json.dumps(counts(running)), flush=True)


@dataclass(frozen=True)
class FirstSync:
    record: RunRecord
    wall_s: float  # the whole run: plan, deliver, commit
    delivering_s: float  # from the first request to the last answer


def first_sync(folder: str, sync: dict[str, Any], rows: int, env: dict[str, str]) -> FirstSync:
    """Run a first sync of ``rows`` seeded contacts (table ``analytics.contacts``, DuckDB) with
    ``sync`` in a new project under bench/work/``folder``; ``env`` holds its secrets."""
    root = ROOT / "bench" / "work" / folder
    shutil.rmtree(root, ignore_errors=True)
    (root / "syncs").mkdir(parents=True)
    (root / "syncback.yaml").write_text(
        yaml.safe_dump(
            {
                "warehouses": {"local": {"type": "duckdb", "path": "wh.duckdb"}},
                "state": {"warehouse": "local"},
            }
        )
    )
    sync = {"warehouse": "local", "table": "analytics.contacts", "primary_key": "customer_id", **sync}
    (root / "syncs" / f"{sync['name']}.yaml").write_text(yaml.safe_dump(sync))
    write_contacts(root / "wh.duckdb", contacts_rows(rows))
    os.environ.update(env)
    project = load_project(root)
    rt = Runtime(project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path))
    clock = Clock()
    started = time.perf_counter()
    record = run_sync(rt, sync["name"], progress=clock)
    return FirstSync(record, time.perf_counter() - started, clock.last - clock.started)


def ratio_rows(
    what: str, rate: str, of_ceiling: float, rate_limited: int, throttles: str = "429s"
) -> list[list[str]]:
    """Return a destination's two table rows: its ``rate`` as a share of the limit, and how many
    ``throttles`` (the vendor's word for a refusal over the limit) it met."""
    return [
        [f"{what}: {rate} ÷ limit", f"{of_ceiling:.3f}", "≥ 0.9", "yes" if of_ceiling >= 0.9 else "**no**"],
        [f"{what}: {throttles}", str(rate_limited), "0", "yes" if rate_limited == 0 else "**no**"],
    ]


def at_the_limit(
    concurrency: int, run: FirstSync, counts: dict[str, Any], records: int, ceiling: float
) -> dict[str, Any]:
    """Return one run at a destination's limit as the report takes it: its records/s ÷ ``ceiling``,
    the requests and 429s the fake counted; every record delivered, or the bench fails."""
    assert run.record.delivered == records == counts["users"], (run.record, counts)
    return {
        "concurrency": concurrency,
        "wall_s": run.wall_s,
        "of_ceiling": records / run.delivering_s / ceiling,
        "requests": counts["requests"],
        "rate_limited": counts["429"],
    }


def report(
    runs: list[dict[str, Any]],
    what: Callable[[int], str],
    rate: str,
    records: str,
    why: str,
    throttles: str = "429s",
) -> None:
    """Print a destination bench's rows (``what(concurrency)``: rate ÷ limit, throttles) and note."""
    rows = [
        row
        for r in runs
        for row in ratio_rows(what(r["concurrency"]), rate, r["of_ceiling"], r["rate_limited"], throttles)
    ]
    note = (
        f"{records}; requests the fake saw: "
        + ", ".join(f"{r['concurrency']} deliverer(s) {r['requests']:,}" for r in runs)
        + "; whole runs "
        + ", ".join(f"{r['wall_s']:.1f} s" for r in runs)
        + f". {why}"
    )
    print(json.dumps({"rows": rows, "note": note}))
