"""``make bench``: run every measurement in its own process, print one table, write bench/results.md.

Each bench/<name>.py prints its figures as JSON; this file only turns them into the table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from syncback.spec import DEFAULT_DUCKDB_MEMORY

BENCH = Path(__file__).resolve().parent
HUBSPOT_REQUESTS_PER_S = 19  # Professional / Enterprise: 190 requests per rolling 10 s
Row = tuple[str, str, str, str]


#: the memory_limit the scale rows ran at (``bench/scale.py``)
SCALE_LIMIT = os.environ.get("SCALE_MEMORY_LIMIT") or DEFAULT_DUCKDB_MEMORY


def measure(name: str) -> dict[str, Any]:
    started = time.perf_counter()
    print(f"… {name}", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, str(BENCH / f"{name}.py")], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench/{name}.py failed:\n{out.stderr[-3000:]}")
    print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return dict(json.loads(out.stdout))


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def plan_rows(p: dict[str, Any]) -> list[Row]:
    what = f"Plan: {p['rows']:,} rows, {p['changed']:,} changed, {p['removed']:,} removed (DuckDB)"
    return [
        (f"{what}: time", f"{p['seconds']:.2f} s", "< 3 s", met(p["seconds"] < 3)),
        (f"{what}: peak RSS", f"{p['peak_mb']:.0f} MB", "< 500 MB", met(p["peak_mb"] < 500)),
    ]


def steps(run: dict[str, Any]) -> str:
    """The peak RSS of each step of a run, as ``scale.py`` measures them."""
    return ", ".join(f"{name} {run[f'{name}_peak_mb']:.0f}" for name in ("plan", "deliver", "commit"))


def scale_rows(c: dict[str, Any]) -> list[Row]:
    big, small, first = f"{c['rows']:,}", f"{c['small_rows']:,}", c["first"]
    what = f"{big}-row first sync to a no-op webhook receiver"
    ratio = first["peak_mb"] / c["small_first"]["peak_mb"]
    return [
        (f"{what}: plan time", f"{first['plan_s']:.1f} s", "≤ 60 s", met(first["plan_s"] <= 60)),
        (
            f"{what}: peak RSS of the syncback process (plan, deliver, commit)",
            f"{first['peak_mb']:.0f} MB ({steps(first)})",
            "≤ 512 MB",
            met(first["peak_mb"] <= 512),
        ),
        (f"{what}: commit time", f"{first['commit_s']:.1f} s", "≤ 60 s", met(first["commit_s"] <= 60)),
        (f"{what}: deliver time (not a target) ⁵", f"{first['deliver_s']:.0f} s", "—", "—"),
        (
            f"{big} rows, {c['changed']:,} changed (1%): plan time / peak RSS (plan, deliver, commit)",
            f"{c['one_percent']['plan_s']:.1f} s / {c['one_percent']['peak_mb']:.0f} MB ({steps(c['one_percent'])})",
            "≤ 10 s / ≤ 512 MB",
            met(c["one_percent"]["plan_s"] <= 10 and c["one_percent"]["peak_mb"] <= 512),
        ),
        (
            f"{big} rows, 1% changed: commit time (not a target)",
            f"{c['one_percent']['commit_s']:.1f} s",
            "—",
            "—",
        ),
        (
            f"peak RSS, first sync of {small} vs {big} rows",
            f"{c['small_first']['peak_mb']:.0f} MB ({steps(c['small_first'])}) vs {first['peak_mb']:.0f} MB "
            f"({ratio:.2f}×)",
            "within 20%",
            met(ratio <= 1.2),
        ),
        (
            f"a {small}-row run cut off by its deadline halfway ({c['cut']['delivered']:,} sent): records re-sent by the next run",
            str(c["resent"]),
            "0",
            met(c["resent"] == 0),
        ),
    ]


def overhead_rows(o: dict[str, Any]) -> list[Row]:
    what = f"Engine: {o['rows']:,}-row first sync, no rate limit"
    return [
        (f"{what}: records/s end to end", f"{o['records_per_s']:,.0f}", "—", "—"),
        (f"{what}: process CPU per record", f"{o['cpu_us_per_record']:.1f} µs", "—", "—"),
        (
            f"{what}: CPU per record in syncback's own code ¹",
            f"{o['ours_us_per_record']:.1f} µs",
            "< 20 µs",
            met(o["ours_us_per_record"] < 20),
        ),
    ]


def limit_rows(lim: dict[str, Any]) -> list[Row]:
    rows = []
    for run in lim["runs"]:
        what = (
            f"At the limit ({lim['ceiling_records_per_s']:,.0f} records/s), {run['concurrency']} deliverer(s)"
        )
        rows += [
            (
                f"{what}: steady rate ÷ limit ²",
                f"{run['of_ceiling']:.3f}",
                "≥ 0.95",
                met(run["of_ceiling"] >= 0.95),
            ),
            (f"{what}: 429s", str(run["rate_limited"]), "0", met(run["rate_limited"] == 0)),
        ]
    return rows


def serverless_rows(s: dict[str, Any]) -> list[Row]:
    rows = []
    for name, handler in s["handlers"].items():
        target = "< 300 ms" if name == "deliver" else "—"
        ok = met(handler["ms"] < 300) if name == "deliver" else "—"
        where = "as deployed" if s["deployed"] else "source tree, no SAM CLI"
        rows.append(
            (f"Cold import of functions/{name}/app.py, {where} ³", f"{handler['ms']:.0f} ms", target, ok)
        )
    size = "not built (sam not on PATH)" if s["layer_mb"] is None else f"{s['layer_mb']:.1f} MB"
    rows.append(
        (
            "Built layer, unzipped",
            size,
            "< 100 MB",
            "—" if s["layer_mb"] is None else met(s["layer_mb"] < 100),
        )
    )
    return rows


def versus_rows(v: dict[str, Any]) -> list[Row]:
    rows = []
    for run, label in (
        ("first", f"first sync, {v['rows']:,} rows"),
        ("second", f"second sync, {v['changed']:,} changed"),
    ):
        ours, theirs = v[run]["syncback"], v[run]["drt"]
        on_hubspot = theirs["requests"] / max(ours["requests"], 1)
        rows += [
            (
                f"vs drt, {label}: wall time on the sandbox, unpaced ⁴",
                f"syncback {ours['s']:.1f} s · drt {theirs['s']:.1f} s → {theirs['s'] / ours['s']:.0f}×",
                "—",
                "—",
            ),
            (
                f"vs drt, {label}: requests (records) sent",
                f"syncback {ours['requests']:,} ({ours['records']:,}) · drt {theirs['requests']:,} ({theirs['records']:,})",
                "no unchanged rows" if run == "second" else "—",
                met(ours["records"] == v["changed"]) if run == "second" else "—",
            ),
            (
                f"vs drt, {label}: time at HubSpot's limit ({HUBSPOT_REQUESTS_PER_S} req/s) ⁴",
                f"syncback {ours['requests'] / HUBSPOT_REQUESTS_PER_S:,.0f} s · "
                f"drt {theirs['requests'] / HUBSPOT_REQUESTS_PER_S:,.0f} s → {on_hubspot:,.0f}×",
                "≥ 50×",
                met(on_hubspot >= 50),
            ),
        ]
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| figure | value | target | met? |", "| --- | --- | --- | --- |"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows])


def machine(load: tuple[float, float, float]) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?"
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    ram_gb = int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2
    return (
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n- CPU: {cpu}, {os.cpu_count()} cores\n"
        f"- RAM: {ram_gb:.1f} GB\n- Python {platform.python_version()}\n- OS: {platform.platform()}\n"
        f"- load average before the run (1, 5, 15 min): {', '.join(f'{n:.2f}' for n in load)}"
    )


def footnotes(o: dict[str, Any], lim: dict[str, Any], s: dict[str, Any], v: dict[str, Any]) -> str:
    owners = ", ".join(f"{k} {sec:.2f}" for k, sec in o["profiled_s_by_owner"].items() if sec >= 0.01)
    modules = ", ".join(f"{k} {sec:.2f}" for k, sec in o["profiled_ours_s_by_module"].items() if sec >= 0.01)
    heaviest = ", ".join(f"{n} {ms:.0f} ms" for n, ms in s["handlers"].get("deliver", {}).get("heaviest", []))
    run_share = ", ".join(f"{r['concurrency']}: {r['run_of_ceiling']:.3f}" for r in lim["runs"])
    return f"""\
1. `time.process_time()` of a `run_sync` (plan, deliver with 4 threads, commit) gives the
   process's CPU per record ({o["cpu_us_per_record"]:.1f} µs). The same first sync, run again
   step by step in one thread under cProfile, splits it by owner; a C builtin's time goes to the
   module that called it, DuckDB's to DuckDB. syncback's share ({o["ours_share"]:.0%}) × the
   process CPU ÷ records is the figure. cProfile slows Python frames more than C calls, so the
   share is if anything overstated. Profiled seconds by owner: {owners}; syncback's by module:
   {modules}. The sandbox runs in its own process and is not counted.
2. The sandbox allows {lim["requests_per_window"]} requests per rolling {lim["window_s"]:g} s window (100 records each); the spec
   declares the same. Records/s after the first window's burst ÷ the limit (a plain records ÷
   seconds counts N windows of requests in N-1 windows). Whole run, plan and commit included:
   {run_share}. RateBudget's widened window caps the steady rate at {lim["budget_bound"]:.3f} of
   the limit; each 429 holds every deliverer for the limit's interval ({lim["window_s"]:g} s here).
3. `python -X importtime -c "import app"` from the function's folder as `sam build` leaves it, the
   built layer on the path (no site-packages, no .pyc written: Lambda's /opt is read-only), median
   of 3 after a warm-up run. deliver's heaviest imports: {heaviest}.
4. The sandbox without a limit measures each tool's own speed; drt (drt-core 1.2.1, its own venv)
   writes one record per request (POST, then PATCH on 409) and, with a DuckDB source, resends
   every row each run (`mode: full`: its diff strategy takes only Postgres, Snowflake, Databricks
   and BigQuery). At HubSpot's limit time is requests ÷ the rate; drt also caps itself at 9 req/s
   for HubSpot, which would double its times. drt's 409s on the second sync: {v["second"]["drt"]["errors"]:,}.
5. Each run of the scale rows (plan, deliver, commit) runs in a process of its own; its peak RSS
   is the highest VmHWM of its steps, each reset before the step (`/proc/self/clear_refs`) and
   shown in brackets in MB. DuckDB may use {SCALE_LIMIT} (`memory_limit`), beyond which it spills. The
   receiver, in the bench's process, reads every body and answers 200. Deliver time is the
   webhook client's (JSON in and out, requests) with 2 threads on this 2-core machine.
"""


def destination_rows() -> tuple[list[Row], str]:
    """Run each destination's own bench, ``bench/destinations/<type>.py``: it prints ``{"rows":
    [[figure, value, target, met], ...], "note": text}`` as JSON. A new destination adds its file
    (``_harness.py`` is what they share)."""
    rows: list[Row] = []
    notes = []
    for script in sorted((BENCH / "destinations").glob("[!_]*.py")):
        found = measure(f"destinations/{script.stem}")
        rows += [(str(a), str(b), str(c), str(d)) for a, b, c, d in found["rows"]]
        notes.append(f"- {script.stem}: {found['note']}")
    return rows, ("\nDestinations:\n\n" + "\n".join(notes) + "\n") if notes else ""


def main() -> int:
    started, load = time.perf_counter(), os.getloadavg()
    p, c, o, lim, s, v = (
        measure(n) for n in ("plan", "scale", "overhead", "limit", "serverless", "drt_compare")
    )
    per_destination, destination_notes = destination_rows()
    rows = (
        plan_rows(p)
        + scale_rows(c)
        + overhead_rows(o)
        + limit_rows(lim)
        + serverless_rows(s)
        + versus_rows(v)
        + per_destination
    )
    text = table(rows)
    print(text)
    notes = footnotes(o, lim, s, v) + destination_notes
    print("\n" + notes)
    (BENCH / "results.md").write_text(
        f"# Benchmarks\n\n`make bench`, {time.perf_counter() - started:.0f} s in all.\n\n"
        f"{machine(load)}\n\n{text}\n\n{notes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
