"""``syncback [--project DIR] COMMAND``: validate, plan, run, runs, dlq, schema, sandbox.

Exit codes: see ``EXIT_CODES`` (shown by every ``--help``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from syncback.batches import LocalBatchStore
from syncback.commit import replay
from syncback.dbt import exposures
from syncback.delivery import Interrupt
from syncback.destinations.registry import check_secret, secret_fields
from syncback.errors import ConfigError, Problem, SecretError, SyncbackError
from syncback.mapping import describe, model_problems
from syncback.runner import Progress, planner_for, run_sync
from syncback.runtime import Runtime, new_run_id
from syncback.spec import Project, json_schemas, load_project
from syncback.state import LocalStateStore, RunRecord
from syncback.status import statuses

OK, REJECTED, CONFIG, FAILED, CANCELLED = 0, 1, 2, 3, 130
SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schema"


class Bar(Progress):
    """A one-line progress bar on stderr, redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out: TextIO = out or sys.stderr
        self.total, self.done, self._shown, self._start = 0, 0, -1, time.monotonic()

    def start(self, total: int) -> None:
        self.total, self._start = total, time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        tenth = self.done * 10 // max(self.total, 1)
        if self.out.isatty() or tenth != self._shown:
            self._shown = tenth
            self._draw("\r" if self.out.isatty() else "")

    def finish(self) -> None:
        if self.total and self.out.isatty():
            self.out.write("\n")

    def _draw(self, prefix: str) -> None:
        share = min(self.done / max(self.total, 1), 1.0)
        rate = self.done / max(time.monotonic() - self._start, 1e-6)
        bar = "#" * int(share * 30)
        end = "" if self.out.isatty() else "\n"
        self.out.write(f"{prefix}  [{bar:<30}] {self.done:>8,}/{self.total:,} records  {rate:,.0f}/s{end}")
        self.out.flush()


def _runtime(project: Project) -> Runtime:
    root = project.state_path
    return Runtime(project, LocalBatchStore(root), LocalStateStore(root))


def summary(record: RunRecord) -> dict[str, Any]:
    """Return the run summary that ``run --json`` prints."""
    return {
        "sync": record.sync,
        "run_id": record.run_id,
        "status": record.status,
        "planned": record.planned,
        "delivered": record.delivered,
        "rejected": record.rejected,
        "skipped": record.skipped,
        "undelivered": record.undelivered,
        "duration_s": record.duration_s,
        "error": record.error,
        "invalid_sample": record.invalid_sample,
        "rejected_sample": record.rejected_sample,
        "warnings": record.warnings,
    }


def _print_summary(record: RunRecord) -> None:
    p = record.planned
    print(f"sync {record.sync}  run {record.run_id}  {record.status.upper()}  in {record.duration_s:.1f}s")
    if p:
        print(
            f"  planned    added {p['added']:,}  changed {p['changed']:,}  removed {p['removed']:,}  "
            f"unchanged {p['unchanged']:,}  invalid {p['invalid']:,}"
        )
    print(
        f"  outcome    delivered {record.delivered:,}  rejected {record.rejected:,}  skipped {record.skipped:,}"
        + (f"  not delivered {record.undelivered:,}" if record.undelivered else "")
    )
    for item in record.invalid_sample[:5]:
        print(f"  invalid    {item['key']}: {item['reason']}")
    for item in record.rejected_sample[:5]:
        print(f"  rejected   {item['key']}: {item['reason']}")
    for warning in record.warnings:
        print(f"  warning    {warning}")
    if record.rejected:
        print(
            f"  the rejected records are planned again next run; see them with: syncback dlq list {record.sync}"
        )
    if record.error:
        print(f"  error      {record.error}")


def cmd_validate(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    if not args.offline:
        problems = _model_problems(project)
        if problems:
            raise ConfigError(problems)
    checked = "specs" if args.offline else "specs and models"
    print(f"{len(project.syncs)} sync(s) valid ({checked}): {', '.join(sorted(project.syncs)) or 'none'}")
    return OK


def _model_problems(project: Project) -> list[Problem]:
    """Describe each sync's model in its warehouse (nothing runs in full), check the spec against it,
    and check that the environment variables its destination names are set."""
    rt = _runtime(project)
    problems: list[Problem] = []
    for sync in project.syncs.values():
        file = f"syncs/{sync.name}.yaml"
        # env: references are checked here; secret: ones are read from AWS when a run starts
        env_refs = [(f, ref) for f, ref in secret_fields(sync) if ref.startswith("env:")]
        for field, reference in env_refs:
            try:
                value = rt.secrets.resolve(reference, f"{file}: {field}")
            except SecretError as exc:
                problems.append(Problem(file, field, str(exc).split(": ", 2)[-1]))
                continue
            try:
                check_secret(sync, field, value)
            except SecretError as exc:
                problems.append(Problem(file, field, str(exc)))
        try:
            with rt.models(sync) as models, rt.warehouse(sync) as state:
                reader = models or state  # the model is read with the models' credentials
                problems += model_problems(sync, describe(reader.columns(sync.model_sql), reader.dialect))
        except SecretError as exc:
            # the warehouse's credentials are in syncback.yaml, not in the sync
            problems.append(Problem("syncback.yaml", f"warehouses.{sync.warehouse}", str(exc)))
        except SyncbackError as exc:
            field = "model" if sync.model else "table"
            problems.append(Problem(file, field, f"{exc}\n  (use --offline to check the files only)"))
    return problems


def cmd_plan(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    rt = _runtime(project)
    sync = project.sync(args.sync)
    with planner_for(rt, sync) as planner:
        plan = planner.plan(new_run_id(), None, args.full_resync, sample_changes=args.sample)
    # a data check of severity error that fails would stop a run: the plan says so, and exits 3
    stops = any(not c["passed"] and c["severity"] == "error" for c in plan.checks)
    if args.json:
        print(json.dumps(plan.to_json(), default=str))
        return FAILED if stops else OK
    c = plan.counts
    print(f"plan for {sync.name} (dry run: nothing is sent)")
    print(
        f"  added {c.added:,}  changed {c.changed:,}  removed {c.removed:,}  unchanged {c.unchanged:,}  "
        f"invalid {c.invalid:,}  (snapshot holds {plan.snapshot_size:,})"
    )
    for check in plan.checks:
        verdict = "pass" if check["passed"] else "FAIL" if check["severity"] == "error" else "warn"
        print(f"  check    {verdict:<4}  {check['check']}: {check['detail']}")
    for row in plan.invalid_sample:
        print(f"  invalid  {row.key}: {row.reason}")
    for change in plan.change_sample:
        print(
            f"  {change['kind']:<8} {change['key']}: {change['action']} {json.dumps(change['record'])[:200]}"
        )
    if stops:
        print("  a run would stop here: a data check of severity error fails")
        return FAILED
    return OK


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_run(args: argparse.Namespace) -> int:
    try:
        project = load_project(args.project)
        bar = None if args.json else Bar()
        with interruptible() as interrupt:
            record = run_sync(_runtime(project), args.sync, args.full_resync, bar, interrupt)
    except SyncbackError as exc:
        if not args.json:
            raise
        # --json always prints one object, so that scripts can read why a run did not happen
        print(json.dumps({"sync": args.sync, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        return exit_code(exc)
    if args.json:
        print(json.dumps(summary(record)))
    else:
        _print_summary(record)
    return {"succeeded": OK, "skipped": OK, "partial": REJECTED, "cancelled": CANCELLED}.get(
        record.status, FAILED
    )


@contextlib.contextmanager
def interruptible() -> Iterator[Interrupt]:
    """Yield an Interrupt that the first Ctrl-C (or SIGTERM) sets: the run stops sending, commits
    what was delivered and is recorded cancelled. A second Ctrl-C exits at once."""
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt  # signals reach the main thread only (a run started from a test's thread)
        return

    def stop(signum: int, frame: object) -> None:
        if interrupt.is_set and signum == signal.SIGINT:
            print("\nstopped at once; the next run commits what was delivered", file=sys.stderr)
            os._exit(CANCELLED)
        interrupt.set(f"cancelled by {signal.Signals(signum).name}")
        print(
            f"\n{signal.Signals(signum).name}: stopping; committing what was delivered (Ctrl-C again to quit now)",
            file=sys.stderr,
        )

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupt
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_runs(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    records = LocalStateStore(project.state_path).runs(args.sync, args.limit)
    if args.sync:
        project.sync(args.sync)
    print(
        f"{'run':<24} {'sync':<24} {'status':<9} {'delivered':>9} {'rejected':>8} {'skipped':>8} "
        f"{'invalid':>7} {'seconds':>8}  error"
    )
    for r in records:
        print(
            f"{r.run_id:<24} {r.sync:<24} {r.status:<9} {r.delivered:>9,} {r.rejected:>8,} "
            f"{r.skipped:>8,} {r.planned.get('invalid', 0):>7,} {r.duration_s:>8.1f}  {_clip(r.error or '', 80)}"
        )
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    found = statuses(project, LocalStateStore(project.state_path), dt.datetime.now(dt.UTC))
    if args.json:
        print(json.dumps([s.to_json() for s in found]))
        return REJECTED if any(s.alerts for s in found) else OK
    print(
        f"{'sync':<24} {'owner':<18} {'schedule':<16} {'last run':<10} {'age':>7} {'delivered':>9} {'rejected':>8} {'invalid':>7}"
    )
    for s in found:
        run = s.last_run
        if run is None:
            line = f"{'never run':<10} {'':>7} {'':>9} {'':>8} {'':>7}"
        else:
            line = (
                f"{run['status']:<10} {_age(run['age_hours']):>7} {run['delivered']:>9,} {run['rejected']:>8,} "
                f"{run['planned'].get('invalid', 0):>7,}"
            )
        print(
            f"{_clip(s.sync, 24):<24} {_clip(s.owner or '-', 18):<18} {_clip(s.schedule or '-', 16):<16} {line}"
        )
        for alert in s.alerts:
            print(f"  ALERT  {alert}")
    open_alerts = sum(len(s.alerts) for s in found)
    print(f"{len(found)} sync(s), {open_alerts} open alert(s)")
    return REJECTED if open_alerts else OK


def _age(hours: float) -> str:
    return f"{hours * 60:.0f}m" if hours < 1 else f"{hours:.1f}h" if hours < 48 else f"{hours / 24:.0f}d"


def cmd_dbt_exposures(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    text = "# written by syncback dbt exposures: do not edit, write it again\n" + yaml.safe_dump(
        exposures(project), sort_keys=False, allow_unicode=True
    )
    if args.out == "-":
        print(text, end="")
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}: {len(project.syncs)} exposure(s)")
    return OK


def cmd_dlq_list(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    project.sync(args.sync)
    letters = LocalStateStore(project.state_path).dead_letters(args.sync)
    print(
        f"{len(letters)} dead letter(s) for {args.sync}"
        + (f"; the first {args.limit}:" if len(letters) > args.limit else "")
    )
    for d in letters[: args.limit]:
        print(f"  {d.key:<24} {d.action:<8} run {d.run_id}  {d.reason}")
    return OK


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    project = load_project(args.project)
    rt = _runtime(project)
    letters = rt.state.dead_letters(args.sync)
    result = replay(rt, args.sync, letters)
    print(
        f"replayed {len(letters)}: delivered {result.delivered}, rejected again {result.rejected}, "
        f"skipped as stale {result.stale}"
    )
    return REJECTED if result.rejected else OK


def cmd_schema(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    stale = []
    for name, schema in json_schemas().items():
        text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        path = out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run: syncback schema", file=sys.stderr)
        return CONFIG
    return OK


EXIT_CODES = """exit codes:
  0    done: every planned record delivered or deliberately skipped (or the run was skipped:
       another run of the sync was in progress)
  1    done with rejected or undelivered records, or more invalid rows than guards allow
  2    a configuration error: a spec or project file, a missing or unusable secret
  3    the run failed: the model, a guard, the destination (credentials, a systemic refusal,
       down past the retries), the warehouse, the commit; what was delivered is kept
  130  cancelled (Ctrl-C or SIGTERM): what was delivered is committed, the rest planned again"""


def _command(sub: Any, name: str, help: str, func: Any, epilog: str = EXIT_CODES) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command.set_defaults(func=func)
    return command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syncback",
        description="Reverse ETL: sync warehouse models to the tools your teams work in.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--project",
        default=".",
        metavar="DIR",
        help="the project folder (syncback.yaml, syncs/); default: here",
    )
    p.add_argument("--version", action="version", version=f"syncback {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = _command(
        sub,
        "validate",
        "check syncback.yaml, every sync spec, each model in its warehouse, and the env: secrets",
        cmd_validate,
    )
    validate.add_argument(
        "--offline", action="store_true", help="check the files only: no warehouse, no secrets"
    )
    plan = _command(
        sub, "plan", "dry run: what a run would send, and why rows are invalid; sends nothing", cmd_plan
    )
    plan.add_argument("sync", help="the sync's name (its file in syncs/ without .yaml)")
    plan.add_argument("--full-resync", action="store_true", help="plan every valid record again, no deletes")
    plan.add_argument(
        "--sample", type=int, default=5, metavar="N", help="how many changes to show (default 5)"
    )
    plan.add_argument("--json", action="store_true", help="print the whole plan as one JSON object")
    run = _command(
        sub,
        "run",
        "run one sync now: plan, deliver, commit; Ctrl-C stops it and keeps what was delivered",
        cmd_run,
    )
    run.add_argument("sync", help="the sync's name (its file in syncs/ without .yaml)")
    run.add_argument("--full-resync", action="store_true", help="send every valid record again (no deletes)")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    runs = _command(sub, "runs", "run history, newest first, with each failed run's error", cmd_runs)
    runs.add_argument("sync", nargs="?", help="only this sync's runs")
    runs.add_argument("--limit", type=int, default=20, metavar="N", help="show at most N runs (default 20)")
    status = _command(
        sub,
        "status",
        "every sync: its owner, schedule, last run (status, counts, age) and open alerts",
        cmd_status,
        "exit codes:\n  0    no alert is open\n  1    an alert is open (the spec's alerts: a failed run, "
        "rejected or invalid\n       rows above a share, no successful run for too long)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object per sync, in a list")
    dbt = sub.add_parser(
        "dbt", help="dbt integration: exposures for dbt docs", description="dbt integration"
    ).add_subparsers(dest="dbt_command", required=True, metavar="exposures")
    exposures_ = _command(
        dbt,
        "exposures",
        "write a dbt exposures YAML: one exposure (type application) per sync, with its owner and the "
        "model table it reads",
        cmd_dbt_exposures,
    )
    exposures_.add_argument(
        "--out",
        default="-",
        metavar="FILE",
        help="where to write it, e.g. models/syncback_exposures.yml (default: stdout)",
    )
    dlq = sub.add_parser(
        "dlq",
        help="dead letters: records the destination rejected",
        description="dead letters: records the destination rejected",
    ).add_subparsers(dest="dlq_command", required=True, metavar="list|replay")
    dlq_list = _command(
        dlq, "list", "list a sync's dead letters with the destination's reasons", cmd_dlq_list
    )
    dlq_list.add_argument("sync", help="the sync's name")
    dlq_list.add_argument("--limit", type=int, default=50, metavar="N", help="show at most N (default 50)")
    dlq_replay = _command(
        dlq,
        "replay",
        "deliver a sync's dead letters again; a letter a later run wrote over is stale and dropped",
        cmd_dlq_replay,
    )
    dlq_replay.add_argument("sync", help="the sync's name")
    schema = _command(
        sub, "schema", "write (or --check) the JSON Schemas of the spec files", cmd_schema, epilog=""
    )
    schema.add_argument("--dir", default=str(SCHEMA_DIR), help="where the schemas go (default: schema/)")
    schema.add_argument(
        "--check", action="store_true", help="exit 2 if the files are out of date, write nothing"
    )
    sandbox = sub.add_parser(
        "sandbox",
        help="a local destination sandbox for the demo and tests: sandbox hubspot --help",
        description="a local destination sandbox for the demo and tests",
        add_help=False,
    )
    sandbox.add_argument("kind", choices=["hubspot"], help="which destination")
    sandbox.add_argument(
        "options", nargs=argparse.REMAINDER, help="the sandbox's own options (see its --help)"
    )
    sandbox.set_defaults(func=cmd_sandbox)
    return p


def cmd_sandbox(args: argparse.Namespace) -> int:
    # a fake of a vendor for the demo and tests, imported only here; it parses its own options
    from syncback.sandbox.hubspot import main as sandbox_main

    code: int = sandbox_main(args.options)
    return code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("syncback")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except SyncbackError as exc:
        problems = exc.problems if isinstance(exc, ConfigError) else [f"error: {type(exc).__name__}: {exc}"]
        for problem in problems:
            print(problem, file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:
        # `syncback dlq list X | head`: the reader left; that is not an error
        sys.stderr.close()
        return OK


def exit_code(exc: SyncbackError) -> int:
    """Return the exit code an error means: 2 for configuration (files, secrets), 3 otherwise."""
    return CONFIG if isinstance(exc, ConfigError | SecretError) else FAILED


if __name__ == "__main__":
    sys.exit(main())
