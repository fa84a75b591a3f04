"""Side by side with drt (drt-core 1.2.1): the same DuckDB table, the same sandbox, HubSpot contacts.

drt is installed in its own venv (bench/work/drt-venv, by uv) and run through drt_launch.py,
which points its HubSpot API base at the sandbox. drt writes one record a request (POST, then
PATCH on 409), so the sandbox runs as sandbox_plus, which adds those endpoints. With a DuckDB
source drt has no diff (its ``incremental_strategy: diff`` takes Postgres, Snowflake, Databricks
and BigQuery) and the model has no cursor column, so every drt run is ``mode: full``.
Both tools run unpaced (no limit in the sandbox, none in either spec): wall time is each tool's own.
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

from common import BENCH, SYNC, WORK, Sandbox, change, fresh_project, sandbox
from overhead import runtime

from syncback.runner import run_sync

ROWS = 100_000
VENV = WORK / "drt-venv"
DRT_VERSION = "1.2.1"
DRT_SYNC = """\
name: contacts
model: select * from analytics.contacts
destination:
  type: hubspot
  object_type: contacts
  id_property: email
  properties_template: |
    {"email": "{{ row.email | trim | lower }}", "firstname": "{{ row.first_name }}",
     "lastname": "{{ row.last_name }}", "lifecyclestage": "{{ row.lifecycle_stage | lower }}",
     "hs_lead_status": "{{ row.lifecycle_stage | upper }}", "lead_score": {{ row.lead_score }},
     {% if row.lifetime_value is not none %}"ltv": {{ row.lifetime_value }},{% endif %}
     "last_seen": "{{ row.last_seen_at }}", "plan": "{{ row.plan }}", "source": "warehouse"}
  auth: {type: bearer, token_env: HUBSPOT_TOKEN}
sync:
  mode: full
  batch_size: 1000
  rate_limit: {requests_per_second: 0}
  on_error: skip
"""


def install_drt() -> Path:
    """Return drt's Python, installing drt-core[duckdb] into its own venv the first time."""
    python = VENV / "bin" / "python"
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")  # make install puts one in .venv
    if not python.exists():
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(VENV)], check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), f"drt-core[duckdb]=={DRT_VERSION}"], check=True
    )
    return python


def drt_project(root: Path) -> Path:
    """Write a drt project beside the syncback one, reading the same warehouse file."""
    project = root / "drt"
    (project / "syncs").mkdir(parents=True)
    (project / "home" / ".drt").mkdir(parents=True)
    (project / "drt_project.yml").write_text('name: bench\nversion: "0.1"\nprofile: bench\n')
    (project / "home" / ".drt" / "profiles.yml").write_text(
        f"bench:\n  type: duckdb\n  database: {root / 'warehouse.duckdb'}\n"
    )
    (project / "syncs" / "contacts.yml").write_text(DRT_SYNC)
    return project


def timed(box: Sandbox, run: Any) -> dict[str, Any]:
    """Run ``run()``; return its wall time and what the sandbox received meanwhile."""
    before = box.stats()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    after = box.stats()
    return {
        "s": seconds,
        "requests": after["requests"] - before["requests"],
        "records": after["inputs"] - before["inputs"],
        "errors": sum(n for s, n in after["by_status"].items() if s >= "400")
        - sum(n for s, n in before["by_status"].items() if s >= "400"),
    }


def measure(rows: int = ROWS) -> dict[str, Any]:
    python = install_drt()
    with sandbox("--requests-per-window", "0", module="sandbox_plus") as box:
        root = fresh_project("versus", rows, box.url)
        project = drt_project(root)
        env = {**os.environ, "HOME": str(project / "home"), "DRT_HUBSPOT_BASE": box.url, "DO_NOT_TRACK": "1"}

        def drt() -> None:
            command = [str(python), str(BENCH / "drt_launch.py"), "run", "--select", "contacts"]
            out = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"drt failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")

        def syncback() -> None:
            run_sync(runtime(root), SYNC)

        result = {"rows": rows, "first": {"syncback": timed(box, syncback)}}
        box.reset()
        result["first"]["drt"] = timed(box, drt)
        changed, _ = change(root / "warehouse.duckdb", every=100, remove=0)
        result["changed"] = changed
        result["second"] = {"syncback": timed(box, syncback), "drt": timed(box, drt)}
    return result


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if sys.argv[1:] else ROWS), indent=2))
