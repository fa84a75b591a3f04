"""What the benchmarks share: a work folder, a seeded project, the sandbox in its own process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
TOKEN = "bench-token"
SYNC = "contacts"
sys.path.insert(0, str(ROOT / "example"))

from seed import change, seed  # noqa: E402

__all__ = ["SYNC", "TOKEN", "change", "fresh_project", "sandbox", "seed"]

# the example's mapping: ten fields, transforms, a constant, a skipped null
MAPPING = """\
mapping:
  email: {column: email, transform: [trim, lower]}
  firstname: first_name
  lastname: last_name
  lifecyclestage: {column: lifecycle_stage, transform: lower}
  hs_lead_status: {column: lifecycle_stage, transform: upper}
  lead_score: {column: lead_score, transform: integer}
  ltv: {column: lifetime_value, transform: float, on_null: skip}
  last_seen: {column: last_seen_at, transform: iso_date}
  plan: plan
  source: {value: warehouse}
"""


def fresh_project(
    name: str,
    rows: int,
    base_url: str = "http://127.0.0.1:9",
    rate_limit: tuple[int, float] = (1_000_000, 1.0),
    concurrency: int = 4,
) -> Path:
    """Return a new project folder under bench/work/ with ``rows`` seeded contacts.

    HubSpot specs always carry a rate budget; "no limit" is one no run can reach.
    """
    root = WORK / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "syncs").mkdir(parents=True)
    seed(root / "warehouse.duckdb", rows)
    (root / "syncback.yaml").write_text(
        "warehouses:\n  local: {type: duckdb, path: warehouse.duckdb}\n"
        "state: {warehouse: local, schema: syncback}\n"
    )
    requests, per_seconds = rate_limit
    (root / "syncs" / f"{SYNC}.yaml").write_text(
        f"name: {SYNC}\nwarehouse: local\ntable: analytics.contacts\nprimary_key: customer_id\n"
        "mode: upsert\ndestination:\n  type: hubspot\n  object: contacts\n  id_property: email\n"
        f"  token: env:HUBSPOT_TOKEN\n  base_url: {base_url}\n"
        f"  rate_limit: {{requests: {requests}, per_seconds: {per_seconds}}}\n"
        f"  concurrency: {concurrency}\n" + MAPPING
    )
    os.environ["HUBSPOT_TOKEN"] = TOKEN
    return root


class Sandbox:
    """A HubSpot sandbox running in another process, so its CPU is not ours."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process, self.url = process, url

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_sandbox/stats", timeout=10) as response:
            return dict(json.load(response))

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/_sandbox/reset", method="POST", data=b"")
        urllib.request.urlopen(request, timeout=30).close()


@contextmanager
def sandbox(*args: str, module: str = "syncback.sandbox.hubspot") -> Iterator[Sandbox]:
    """Start a sandbox on a free port (``args`` are its CLI flags); stop it on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", "--token", TOKEN, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=BENCH,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "HubSpot sandbox listening on http://127.0.0.1:PORT"
    try:
        yield Sandbox(process, line.split()[-1])
    finally:
        process.terminate()
        process.wait(timeout=10)
