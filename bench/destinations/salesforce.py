"""Salesforce at its limit: records per API request, the figure an org's limit is spent in.

Salesforce limits API requests per rolling 24 hours (Enterprise: 100,000 + 1,000 per licence) and
documents no per-second limit, so at its limit a sync's rate is 200 times the requests it may spend ÷
86,400 s, and what syncback controls is how many records each request carries. Measured on the
test fake: a first sync of 100,000 rows and a second with 1% changed through sObject Collections,
and a first sync through Bulk API 2.0 jobs of 10,000 (to another object): the records each request
carried ÷ 200 (what Collections carry at most), and the requests that were not writes (tokens). There is no 429 row: Salesforce
sends none; its limit answers 403 REQUEST_LIMIT_EXCEEDED, which stops a run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from syncback.batches import LocalBatchStore  # noqa: E402
from syncback.runner import run_sync  # noqa: E402
from syncback.runtime import Runtime  # noqa: E402
from syncback.spec import load_project  # noqa: E402
from syncback.state import LocalStateStore  # noqa: E402
from tests.conftest import contacts_rows, write_contacts  # noqa: E402
from tests.fakes.salesforce import CLIENT_ID, CLIENT_SECRET, SalesforceFake  # noqa: E402

ROWS = 100_000


def measure() -> dict[str, Any]:
    root = ROOT / "bench" / "work" / "salesforce"
    shutil.rmtree(root, ignore_errors=True)
    (root / "syncs").mkdir(parents=True)
    os.environ["BENCH_SF_SECRET"] = CLIENT_SECRET
    out: dict[str, Any] = {}
    with SalesforceFake() as org:
        (root / "syncback.yaml").write_text(
            yaml.safe_dump(
                {
                    "warehouses": {"local": {"type": "duckdb", "path": "wh.duckdb"}},
                    "state": {"warehouse": "local"},
                }
            )
        )
        sync = {
            "name": "customers",
            "warehouse": "local",
            "table": "analytics.contacts",
            "primary_key": "customer_id",
            "destination": {
                "type": "salesforce",
                "object": "Contact",
                "external_id_field": "Customer_Key__c",
                "login_url": org.url,
                "auth": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": "env:BENCH_SF_SECRET",
            },
            "mapping": {"Customer_Key__c": "customer_id", "LastName": "first_name", "Email": "email"},
        }
        (root / "syncs" / "customers.yaml").write_text(yaml.safe_dump(sync))
        rows = contacts_rows(ROWS)
        write_contacts(root / "wh.duckdb", rows)
        project = load_project(root)
        rt = Runtime(project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path))
        for label, change in (
            ("first sync", None),
            ("1% changed", ROWS // 100),
            ("first sync, Bulk API 2.0", None),
        ):
            if label.endswith("Bulk API 2.0"):  # batches of 10,000 (above bulk_above): one job each
                write_contacts(root / "wh.duckdb", rows)
                bulk = {**sync, "batch_size": 10_000, "destination": {**sync["destination"], "poll_s": 0.05}}
                bulk["destination"]["object"] = "Customer__c"
                bulk["mapping"] = {
                    "Customer_Key__c": "customer_id",
                    "firstname__c": "first_name",
                    "email__c": "email",
                }
                (root / "syncs" / "customers.yaml").write_text(yaml.safe_dump(bulk))
                project = load_project(root)
                rt = Runtime(
                    project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path)
                )
            elif change:
                write_contacts(
                    root / "wh.duckdb",
                    [(*r[:2], f"Changed{r[0]}", *r[3:]) if r[0] <= change else r for r in rows],
                )
            before, tokens = org.counts["requests"], org.counts["tokens"]
            started = time.perf_counter()
            record = run_sync(rt, "customers")
            out[label] = {
                "records": record.delivered,
                "requests": org.counts["requests"] - before,
                "tokens": org.counts["tokens"] - tokens,
                "seconds": time.perf_counter() - started,
            }
    return out


def main() -> None:
    runs = measure()
    rows = []
    for label, run in runs.items():
        per_request = run["records"] / run["requests"] / 200
        what = f"Salesforce, {ROWS:,} rows, {label} ({run['records']:,} records)"
        rows += [
            [
                f"{what}: records per request ÷ 200",
                f"{per_request:.3f}",
                "≥ 0.9",
                "yes" if per_request >= 0.9 else "**no**",
            ],
        ]
    note = "; ".join(
        f"{label}: {r['requests']:,} requests, {r['tokens']} token request(s), {r['records'] / r['seconds']:,.0f} records/s unpaced on the fake"
        for label, r in runs.items()
    ) + (
        ". At an Enterprise org's 115,000 requests a day (15 licences), 200 records a request is 266 records/s "
        "averaged over the day, if the sync has the allocation to itself."
    )
    print(json.dumps({"rows": rows, "note": note}))


if __name__ == "__main__":
    main()
