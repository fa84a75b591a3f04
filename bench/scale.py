"""Scale: a first sync of 10,000,000 rows to a no-op webhook receiver, a 1%-changed sync, memory at
1M against 10M rows, and a run cut off halfway followed by one that continues.

Every syncback step runs in a child process of its own, so each peak RSS (VmHWM) is that step's
process alone; the receiver runs in another process and reads each request's body, answering 200.
Prints JSON; ``bench/run.py`` makes the table. ``SCALE_ROWS`` sets the big model (default 10M),
``SCALE_MEMORY_LIMIT`` DuckDB's ``memory_limit`` (default: the spec's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import WORK, change, seed

ROWS = int(os.environ.get("SCALE_ROWS", "10000000"))
SMALL = ROWS // 10
#: DuckDB's memory_limit for the runs (unset: the spec's default), to see what it trades
LIMIT = os.environ.get("SCALE_MEMORY_LIMIT", "")
BATCH = 10_000
SECRET = "whsec_YmVuY2gtc2NhbGUtc2VjcmV0LTMyLWJ5dGVzLWxvbmc="


class Receiver(ThreadingHTTPServer):
    """Reads every body and answers 200: the destination costs nothing, so syncback is what is timed."""

    daemon_threads = True
    records = 0
    requests = 0
    lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body in one go, as real servers send them
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.requests += 1
            self.server.records += body.count(b'"key":')
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def project(name: str, rows: int, url: str, batch: int = BATCH) -> Path:
    root = WORK / name
    if root.exists():
        subprocess.run(["rm", "-rf", str(root)], check=True)
    (root / "syncs").mkdir(parents=True)
    seed(root / "warehouse.duckdb", rows)
    (root / "syncback.yaml").write_text(
        "warehouses:\n  local: {type: duckdb, path: warehouse.duckdb"
        + (f", memory_limit: {LIMIT}" if LIMIT else "")
        + "}\nstate: {warehouse: local, schema: syncback}\n"
    )
    (root / "syncs" / "contacts.yaml").write_text(
        "name: contacts\nwarehouse: local\ntable: analytics.contacts\nprimary_key: customer_id\nmode: upsert\n"
        f"destination: {{type: webhook, url: '{url}', batch_size: {batch}, concurrency: 2}}\n"
        f"batch_size: {batch}\n"
        "mapping:\n  email: {column: email, transform: [trim, lower]}\n  firstname: first_name\n"
        "  lastname: last_name\n  lifecyclestage: {column: lifecycle_stage, transform: lower}\n"
        "  lead_score: {column: lead_score, transform: integer}\n"
        "  ltv: {column: lifetime_value, transform: float, on_null: skip}\n"
        "  last_seen: {column: last_seen_at, transform: iso_date}\n  plan: plan\n  source: {value: warehouse}\n"
    )
    return root


def child(root: str, what: str) -> None:
    """One run, step by step, timed: print the seconds and the peak RSS of each step, and the
    process's peak over them all."""
    from syncback.batches import LocalBatchStore
    from syncback.commit import commit_run
    from syncback.delivery import Interrupt
    from syncback.planner import PHASES
    from syncback.runner import Progress, _deliver_all, plan_run
    from syncback.runtime import Runtime, new_run_id
    from syncback.spec import load_project
    from syncback.state import LocalStateStore

    loaded = load_project(root)
    rt = Runtime(loaded, LocalBatchStore(loaded.state_path), LocalStateStore(loaded.state_path))
    sync = loaded.sync("contacts")
    run_id = new_run_id()
    figures: dict[str, float] = {}
    with rt.holding(sync):
        started = time.perf_counter()
        plan = plan_run(rt, "contacts", run_id)
        figures["plan_s"] = time.perf_counter() - started
        figures["changes"] = plan.counts.changes
        peak_mb("plan", figures)
        if what != "plan":
            interrupt = Interrupt()
            if what == "halfway":  # cut off once half the records are delivered, as a deadline would
                done = [0]

                class Half(Progress):
                    def advance(self, n: int) -> None:
                        done[0] += n
                        if done[0] >= plan.counts.changes // 2:
                            interrupt.set("the run's deadline")

                progress: Progress = Half()
            else:
                progress = Progress()
            destination = rt.destination(sync)
            started = time.perf_counter()
            sent: set[str] = set()
            for phase in PHASES:
                _deliver_all(rt, sync, destination, plan.batches_of(phase), progress, interrupt, sent)
            destination.close()
            figures["deliver_s"] = time.perf_counter() - started
            peak_mb("deliver", figures)
            started = time.perf_counter()
            record = commit_run(rt, "contacts", run_id, cancelled=interrupt.is_set, sent=sent)
            figures["commit_s"] = time.perf_counter() - started
            figures["delivered"] = record.delivered
            figures["undelivered"] = record.undelivered
            peak_mb("commit", figures)
    figures["peak_mb"] = max(figures[name] for name in figures if name.endswith("_peak_mb"))
    print(json.dumps(figures))


def peak_mb(step: str, figures: dict[str, float]) -> None:
    """Record this process's peak RSS (VmHWM) since the last step as ``<step>_peak_mb``, and start
    the next step's afresh (writing 5 to clear_refs resets the peak)."""
    status = Path("/proc/self/status").read_text()
    figures[f"{step}_peak_mb"] = (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024
    )
    Path("/proc/self/clear_refs").write_text("5")


def step(root: Path, what: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(root), what], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return dict(json.loads(out.stdout.splitlines()[-1]))


def measure() -> dict[str, Any]:
    server = Receiver(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    result: dict[str, Any] = {"rows": ROWS, "small_rows": SMALL}

    big = project("scale", ROWS, url)
    result["first"] = step(big, "sync")
    result["first"]["received"] = server.records
    changed, _ = change(big / "warehouse.duckdb", every=100, remove=0)
    result["changed"] = changed
    result["one_percent"] = step(big, "sync")

    small = project("scale_small", SMALL, url)
    result["small_first"] = step(small, "sync")

    # a run cut off halfway by its deadline, then the next run: nothing may arrive twice
    cut = project("scale_cut", SMALL, url, batch=1_000)
    before = server.records
    result["cut"] = step(cut, "halfway")
    result["continued"] = step(cut, "sync")
    result["resent"] = server.records - before - SMALL
    server.shutdown()
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
    else:
        print(json.dumps(measure(), indent=2))
