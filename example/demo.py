"""The demo: seed the example warehouse, start the HubSpot sandbox, sync, change ~1%, sync again.

Run by ``make demo``. Everything stays on this machine: DuckDB in example/warehouse.duckdb,
the sandbox on 127.0.0.1:8099, syncback's state in example/.syncback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORT = 8099
SYNC = "contacts_to_hubspot"
sys.path.insert(0, str(HERE))

from seed import change, seed  # noqa: E402


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def syncback(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "syncback.cli", "--project", str(HERE), *args])


def sandbox_stats() -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/_sandbox/stats", timeout=5) as response:
        return dict(json.load(response))


def start_sandbox() -> subprocess.Popen[str]:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PORT)) == 0:
            sys.exit(f"port {PORT} is in use: stop whatever listens there (an old sandbox?) and run again")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncback.cli",
            "sandbox",
            "hubspot",
            "--port",
            str(PORT),
            "--token",
            "demo-token",
            "--requests-per-window",
            "190",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    print(process.stdout.readline().strip())
    return process


def main() -> int:
    os.environ["HUBSPOT_TOKEN"] = "demo-token"
    warehouse = HERE / "warehouse.duckdb"
    for stale in (warehouse, HERE / ".syncback"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()

    step("seeding the example warehouse (DuckDB)")
    seed(warehouse, 10_000)
    print(f"analytics.contacts: 10,000 customers in {warehouse.relative_to(HERE.parent)}")

    step("starting the local HubSpot-compatible sandbox")
    sandbox = start_sandbox()
    try:
        step(f"syncback validate, then the first run of {SYNC}: every record is new")
        if syncback("validate") != 0 or syncback("run", SYNC) != 0:
            return 1
        first = sandbox_stats()

        step("changing the model: ~1% of lead scores move, a few customers leave")
        changed, removed = change(warehouse)
        print(f"changed {changed} rows, removed {removed} rows")
        if syncback("plan", SYNC, "--sample", "3") != 0:
            return 1

        step("the second run sends only those")
        if syncback("run", SYNC) != 0:
            return 1
        second = sandbox_stats()
        sent = second["inputs"] - first["inputs"]
        print(
            f"\nthe sandbox received {sent} records in the second run "
            f"({second['updated'] - first['updated']} updates, {second['archived'] - first['archived']} archived) "
            f"in {second['requests'] - first['requests']} requests"
        )
        if sent != changed + removed:
            print(f"expected {changed + removed}: something was sent that did not change", file=sys.stderr)
            return 1

        step("run history")
        syncback("runs", SYNC)
        return 0
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
