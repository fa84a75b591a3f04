"""Engine overhead: a 100,000-row first sync to the sandbox with no rate limit.

Two runs of the same first sync (the sandbox and the snapshot reset in between):
1. ``run_sync`` as the CLI runs it: wall time (records/s) and the process's CPU time;
2. the same steps in one thread under cProfile, to split that CPU between syncback's own code and
   the libraries it calls. A C builtin's time goes to the module that called it (``str.lower`` in
   mapping is ours, ``socket.recv_into`` in http.client is not); DuckDB's methods are DuckDB's.
Our µs/record = run 1's CPU seconds * our share of the profile ÷ records. cProfile slows Python
frames more than C calls, so our share is if anything overstated.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
from common import SYNC, fresh_project, sandbox

import syncback
from syncback.batches import LocalBatchStore
from syncback.runner import Runtime, commit_run, deliver_batch, new_run_id, plan_run, run_sync
from syncback.spec import load_project
from syncback.state import LocalStateStore

ROWS = 100_000
OURS = "syncback"
PACKAGE = str(Path(syncback.__file__).parent) + "/"
LIBRARIES = {
    "/requests/": "requests",
    "/urllib3/": "urllib3",
    "/http/": "http.client",
    "socket.py": "socket",
    "/json/": "json",
    "/pydantic": "pydantic",
}


def runtime(root: Path) -> Runtime:
    project = load_project(root)
    return Runtime(project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path))


def forget_everything(root: Path) -> None:
    """Make the next run a first sync again: no snapshot, no run history."""
    shutil.rmtree(load_project(root).state_path, ignore_errors=True)
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        con.execute(f"drop table if exists syncback.snapshot__{SYNC}")


def steps_in_one_thread(rt: Runtime) -> int:
    """Plan, deliver every batch, commit: run_sync's steps without its thread pool."""
    run_id = new_run_id()
    plan = plan_run(rt, SYNC, run_id)
    destination = rt.destination(rt.project.sync(SYNC))
    for ref in plan.batches:
        deliver_batch(rt, SYNC, ref.key, destination)
    destination.close()
    return commit_run(rt, SYNC, run_id).delivered


def where(filename: str, function: str) -> str:
    """Return who a profiled function belongs to, or "" when its caller decides.

    A C builtin, or code generated at run time such as a dataclass's ``__init__`` (``<string>``),
    belongs to its caller. DuckDB's methods are invisible to cProfile: their time shows as our
    thin wrapper's own time, so that wrapper counts as DuckDB.
    """
    if filename.startswith(("~", "<")):
        return ""
    if filename.startswith(PACKAGE):
        if "/sandbox/" in filename:
            return "other"
        return "duckdb" if filename.endswith("warehouses/duckdb.py") else OURS
    return next((name for part, name in LIBRARIES.items() if part in filename), "other")


def attribute(profile: cProfile.Profile) -> tuple[Counter[str], Counter[str]]:
    """Return CPU seconds by owner, and syncback's own seconds by module."""
    owners: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, tottime, _, callers) in stats.items():
        owner = where(filename, function)
        if owner:
            shares = [(owner, filename, tottime)]
        else:  # split its time between its callers, by what each call cost
            shares = [(where(c[0], "") or "other", c[0], timing[2]) for c, timing in callers.items()]
        for who, file, seconds in shares:
            owners[who] += seconds
            if who == OURS:
                modules[file.removeprefix(PACKAGE).removesuffix(".py")] += seconds
    return owners, modules


def measure() -> dict[str, Any]:
    with sandbox("--requests-per-window", "0") as box:
        root = fresh_project("overhead", ROWS, base_url=box.url)
        started, cpu = time.perf_counter(), time.process_time()
        record = run_sync(runtime(root), SYNC)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert record.delivered == ROWS, record
        box.reset()
        forget_everything(root)
        profile = cProfile.Profile()
        profile.enable()
        delivered = steps_in_one_thread(runtime(root))
        profile.disable()
        assert delivered == ROWS and box.stats()["created"] == ROWS
    owners, modules = attribute(profile)
    share = owners[OURS] / sum(owners.values())
    return {
        "rows": ROWS,
        "wall_s": wall,
        "records_per_s": ROWS / wall,
        "cpu_s": cpu,
        "cpu_us_per_record": cpu / ROWS * 1e6,
        "ours_share": share,
        "ours_us_per_record": cpu * share / ROWS * 1e6,
        "profiled_s_by_owner": {k: round(v, 3) for k, v in owners.most_common()},
        "profiled_ours_s_by_module": {k: round(v, 3) for k, v in modules.most_common(8)},
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
