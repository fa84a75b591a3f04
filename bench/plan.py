"""Plan: a 1,000,000-row model, 1% changed and 0.1% removed since the snapshot; time and peak memory.

The snapshot is written straight from the planner's own materialised hashes (what a first run
would commit), then the model changes, and a fresh process does just the plan, batches included.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import SYNC, change, fresh_project

from syncback.batches import LocalBatchStore
from syncback.planner import Planner
from syncback.snapshot import ensure_snapshot
from syncback.spec import load_project
from syncback.warehouses.duckdb import DuckDBWarehouse

ROWS = 1_000_000


def planner(root: Path) -> tuple[Planner, DuckDBWarehouse]:
    project = load_project(root)
    warehouse = DuckDBWarehouse(root / "warehouse.duckdb")
    return Planner(project.sync(SYNC), warehouse, project.config.state.schema_), warehouse


def commit_everything(root: Path) -> None:
    """Write the snapshot a first run delivering every row would leave, with the planner's own SQL."""
    plan, warehouse = planner(root)
    ensure_snapshot(warehouse, plan.tables)
    warehouse.execute(
        f"insert into {plan.tables.snapshot} (key, row_hash, destination_id, identity, created, removed, "
        "version, target, run_id, committed_at) select sb_key, sb_hash, 'hs-' || sb_key, sb_ident, true, "
        f"false, 1, '{plan.target}', 'seed', now()::timestamp from ({plan._plan_sql(plan._mapping_query())}) x "
        "where sb_reason is null"
    )
    warehouse.close()


def child(root: Path) -> None:
    """Plan once and print the seconds, the counts and this process's RSS high-water mark."""
    plan, warehouse = planner(root)
    started = time.perf_counter()
    result = plan.plan("bench", LocalBatchStore(root / ".syncback"))
    seconds = time.perf_counter() - started
    warehouse.close()
    status = Path("/proc/self/status").read_text()
    hwm_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    print(json.dumps({"seconds": seconds, "peak_mb": hwm_kb / 1024, "counts": result.to_json()["counts"]}))


def measure() -> dict[str, Any]:
    root = fresh_project("plan", ROWS)
    commit_everything(root)
    changed, removed = change(root / "warehouse.duckdb", every=100, remove=ROWS // 1000)
    out = subprocess.run([sys.executable, __file__, "--child", str(root)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    result: dict[str, Any] = json.loads(out.stdout)
    result["children_maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result.update(rows=ROWS, changed=changed, removed=removed)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]))
    else:
        print(json.dumps(measure(), indent=2))
