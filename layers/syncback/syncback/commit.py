"""Commit and replay: what the destination did, applied to the snapshot through one rule.

Both stage their outcomes as a table in the warehouse (a commit loads each receipt as it is, the
warehouse parsing it; a replay loads the few outcomes it has) and apply them with
``snapshot.apply_outcomes``, whose one SQL rule (``snapshot.EFFECT``) says what an outcome does to
its key's snapshot row, conditionally on the version, so a replay of an old dead letter never
writes over what a later run delivered. Counts come from the stage too: memory does not grow with
the run. A replay holds the sync's run lock: it never runs between a run's delivery and its commit.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets as random_tokens
from dataclasses import dataclass
from pathlib import Path

from syncback.batch_delivery import answers
from syncback.batches import BatchRef, LocalBatchStore, change_from_json, plan_key, receipt_key
from syncback.delivery import Delivery
from syncback.destinations.base import Change, Outcome
from syncback.destinations.registry import destination_target, identifier_fields
from syncback.errors import RunInProgress
from syncback.history import log_outcomes, log_run
from syncback.planner import PlanResult
from syncback.runtime import Runtime, utcnow
from syncback.snapshot import apply_outcomes, outcome_stage, read_snapshot, stage_rows
from syncback.spec import SyncSpec
from syncback.state import DeadLetter, RunRecord
from syncback.warehouses.base import Warehouse

SAMPLE = 20
log = logging.getLogger("syncback")


def outcome_row(outcome: Outcome, change: Change, seq: int, version: int, batch: int) -> tuple[object, ...]:
    """Return an outcome of ``change`` as a row of the stage (``snapshot.OUTCOME_NAMES``)."""
    return (
        outcome.key,
        outcome.status,
        outcome.destination_id,
        outcome.created,
        change.action,
        change.row_hash,
        change.identity,
        outcome.reason,
        seq,
        version,
        batch,
    )


def counted(change: Change) -> bool:
    """Say whether a change is one of the plan's (a release only prepares another change)."""
    return change.action != "release"


def dead_letter(
    sync: str, run_id: str, version: int, target: str, change: Change, outcome: Outcome
) -> DeadLetter:
    return DeadLetter(
        sync,
        run_id,
        change.key,
        change.action,
        change.row_hash,
        change.destination_id,
        change.record,
        outcome.reason or "rejected",
        utcnow().isoformat(),
        version,
        change.identity,
        target,
    )


# ---- commit ----------------------------------------------------------------------------------


def commit_run(
    rt: Runtime,
    sync_name: str,
    run_id: str,
    error: str | None = None,
    cancelled: bool = False,
    sent: set[str] | None = None,
) -> RunRecord:
    """Apply what the run delivered to the snapshot, keep its dead letters, record the run.

    ``sent``: the batches whose delivery began, where the caller knows (a local run); the others
    were never sent. Otherwise a batch without an answer may have been sent, and its changes are
    taken as possibly done (``snapshot.EFFECT``). Safe to do twice (a commit retried, a run
    recovered after a crash): applying the same outcomes at the same version changes nothing
    more, and the run is recorded once.
    """
    sync = rt.project.sync(sync_name)
    plan = PlanResult.from_json(rt.store.get_json(plan_key(sync_name, run_id)))
    record = RunRecord(
        sync_name,
        run_id,
        "succeeded",
        plan.started_at,
        planned=planned(plan),
        error=error,
        trigger=plan.trigger,
    )
    record.invalid_sample = [{"key": r.key, "reason": r.reason} for r in plan.invalid_sample]
    record.warnings = [f"{c['check']}: {c['detail']}" for c in plan.checks if not c["passed"]]
    tables = rt.tables(sync)
    with rt.warehouse(sync) as warehouse:
        stage = outcome_stage(warehouse, tables)
        try:
            stopped_by = _stage_batches(rt, warehouse, stage, plan, sent)
            _count(warehouse, stage, plan, record)
            _keep_dead_letters(rt, warehouse, stage, plan, record)
            now = utcnow()
            log_outcomes(warehouse, tables, stage, run_id, plan.target, *_fields_sent(sync), now)
            apply_outcomes(warehouse, tables, stage, run_id, plan.target, now)
        finally:
            warehouse.execute(f"drop table if exists {stage}")
        if stopped_by and (error is None or error.startswith("States.")):
            # the state machine knows only that a batch failed; its receipt says why
            more = f" (and {len(stopped_by) - 1} more batches)" if len(stopped_by) > 1 else ""
            error = record.error = stopped_by[0] + more
        record.settled = True
        record.error = record.error or _invalid_rows(plan, sync.guards.max_invalid_pct)
        if cancelled:
            record.status = "cancelled"
        elif error is not None or _all_invalid(plan):
            record.status = "failed"
        elif record.rejected or record.undelivered or record.error:
            record.status = "partial"
        finish(record)
        log_run(warehouse, tables, record, rt.project.config.state.retention_days)
    rt.record_run(record)
    log.info(
        "committed",
        extra={
            "sync": sync_name,
            "run_id": run_id,
            "status": record.status,
            "delivered": record.delivered,
            "rejected": record.rejected,
            "skipped": record.skipped,
            "undelivered": record.undelivered,
        },
    )
    return record


def _stage_batches(
    rt: Runtime, warehouse: Warehouse, stage: str, plan: PlanResult, sent: set[str] | None
) -> list[str]:
    """Stage every batch's outcomes; return the errors that stopped their delivery, as receipts say.

    Receipts kept as local files (a local run's) are read by the warehouse all at once."""
    stopped_by: list[str] = []
    files: list[tuple[Path, int, int, int]] = []
    unsent: list[tuple[Path, int, int, int]] = []
    for index, ref in enumerate(plan.batches):
        if isinstance(rt.store, LocalBatchStore) and rt.store.exists(receipt_key(ref.key)):
            path = rt.store.path(receipt_key(ref.key))
            files.append((path, ref.phase, plan.version, index))
            stopped_by += _receipt_error(path.read_bytes())
        elif sent is None or ref.key in sent:
            stopped_by += _stage_batch(rt, warehouse, stage, plan, index, ref)
        elif isinstance(rt.store, LocalBatchStore):  # never sent: logged as undelivered, nothing more
            unsent.append((rt.store.path(ref.key), ref.phase, plan.version, index))
    warehouse.stage_outcome_files(stage, files)
    warehouse.stage_unsent_files(stage, unsent, "not sent: the run stopped before this batch")
    return stopped_by


def _fields_sent(sync: SyncSpec) -> tuple[list[str], list[str]]:
    """Return the fields a write sends, and those a removal that clears fields empties."""
    identifiers = set(identifier_fields(sync))
    return sorted(sync.mapping), sorted(name for name in sync.mapping if name not in identifiers)


def _receipt_error(text: bytes) -> list[str]:
    return [str(json.loads(text)["error"])] if b'"error":' in text else []


def _stage_batch(
    rt: Runtime, warehouse: Warehouse, stage: str, plan: PlanResult, index: int, ref: BatchRef
) -> list[str]:
    """Stage one batch's outcomes; return the error that stopped its delivery, if it says one.

    A receipt is loaded as it is; a batch cut off without one (a process killed, a Lambda that
    failed) is staged from its journal, with what each change asked read from the batch file, and
    the changes no answer tells of as unanswered.
    """
    if rt.store.exists(receipt_key(ref.key)):
        text = rt.store.get_bytes(receipt_key(ref.key))
        warehouse.stage_outcomes(stage, text, ref.phase, plan.version, index)
        return _receipt_error(text)
    journaled = {o.key: o for o in answers(rt, ref.key)}
    changes = map(change_from_json, rt.store.get_json(ref.key)["changes"])
    stage_rows(
        warehouse,
        stage,
        (
            outcome_row(journaled[c.key], c, ref.phase, plan.version, index)
            if c.key in journaled
            else _unanswered(c, ref.phase, plan.version, index)
            for c in changes
        ),
    )
    return []


def _unanswered(change: Change, seq: int, version: int, batch: int) -> tuple[object, ...]:
    """Return the stage row of a change no answer tells of: its request may have been done (the
    process was killed waiting for the answer); ``snapshot.EFFECT`` says what that means. Its hash
    is not kept: what the record holds is not known."""
    return (
        change.key,
        "unanswered",
        change.destination_id,
        None,
        change.action,
        None,
        change.identity,
        None,
        seq,
        version,
        batch,
    )


def _count(warehouse: Warehouse, stage: str, plan: PlanResult, record: RunRecord) -> None:
    """Count the run's outcomes from the stage; what no outcome answers was not delivered."""
    for status, n in warehouse.fetch_all(
        f"select status, count(*) from {stage} where action <> 'release' group by status"
    ):
        if status in ("delivered", "rejected", "skipped"):
            setattr(record, status, int(n))
    # releases only prepare another change; the rest of the plan (deferred ones included) waits
    record.undelivered = plan.counts.changes - record.delivered - record.rejected - record.skipped


def _keep_dead_letters(
    rt: Runtime, warehouse: Warehouse, stage: str, plan: PlanResult, record: RunRecord
) -> None:
    """Send the rejected records to the dead letters, a batch at a time (their values read from
    the batch file), and settle the letters of records this run delivered."""
    sql = (
        f"select batch, key, reason from {stage} where status = 'rejected' and action <> 'release' "
        "order by batch, key"
    )
    current, reasons = -1, dict[str, str]()
    for chunk in warehouse.stream(sql):
        for index, key, reason in chunk:
            if int(index) != current and reasons:
                _send_letters(rt, plan, current, reasons, record)
                reasons = {}
            current = int(index)
            reasons[key] = reason or "rejected"
    if reasons:
        _send_letters(rt, plan, current, reasons, record)
    pending = rt.state.pending_letter_keys(plan.sync)
    if pending:
        settled = f"select key from {stage} where status in ('delivered', 'skipped') and action <> 'release'"
        delivered = [key for chunk in warehouse.stream(settled) for (key,) in chunk if key in pending]
        rt.state.resolve_dead_letters(plan.sync, delivered)


def _send_letters(
    rt: Runtime, plan: PlanResult, index: int, reasons: dict[str, str], record: RunRecord
) -> None:
    changes = map(change_from_json, rt.store.get_json(plan.batches[index].key)["changes"])
    outcomes = {k: Outcome(k, "rejected", reason=r) for k, r in reasons.items()}
    letters = [
        dead_letter(plan.sync, plan.run_id, plan.version, plan.target, c, outcomes[c.key])
        for c in changes
        if c.key in outcomes and counted(c)
    ]
    rt.state.put_dead_letters(plan.sync, letters)
    room = SAMPLE - len(record.rejected_sample)
    record.rejected_sample += [{"key": d.key, "reason": d.reason} for d in letters[:room]]


def _all_invalid(plan: PlanResult) -> bool:
    c = plan.counts
    return c.invalid > 0 and c.added + c.changed + c.unchanged == 0


def _invalid_rows(plan: PlanResult, max_pct: float) -> str | None:
    """Return why the run is not a success for its invalid rows (guards.max_invalid_pct), or None."""
    c = plan.counts
    rows = c.added + c.changed + c.unchanged + c.invalid
    share = 100.0 * c.invalid / rows if rows else 0.0
    if _all_invalid(plan):
        return (
            f"InvalidRows: every one of the model's {c.invalid} rows is invalid; nothing was sent (see plan)"
        )
    if share > max_pct:
        return (
            f"InvalidRows: {c.invalid} of {rows} rows ({share:.1f}%) are invalid, "
            f"above guards.max_invalid_pct {max_pct:g}"
        )
    return None


def planned(plan: PlanResult) -> dict[str, int]:
    c = plan.counts
    return {
        "added": c.added,
        "changed": c.changed,
        "removed": c.removed,
        "unchanged": c.unchanged,
        "invalid": c.invalid,
    }


def finish(record: RunRecord) -> None:
    now = utcnow()
    record.finished_at = now.isoformat()
    if record.started_at:
        record.duration_s = round((now - dt.datetime.fromisoformat(record.started_at)).total_seconds(), 3)


# ---- runs that ended without their commit ----------------------------------------------------

#: how many of a sync's latest runs a new run looks through for ones left uncommitted
RECOVER_WINDOW = 50


def recover(rt: Runtime, sync_name: str, current: str) -> list[RunRecord]:
    """Commit the runs of ``sync_name`` that ended without their commit (hold the run lock).

    A run killed, or whose commit failed, is in the history unsettled: what it delivered (its
    receipts, journals) is applied to the snapshot now, with the destination's ids and whether it
    created each record, so the next plan sends only what is still missing.
    """
    recovered = []
    for run in rt.state.runs(sync_name, limit=RECOVER_WINDOW):
        if run.settled or run.run_id == current:
            continue
        why = f"{run.error}; " if run.error else ""
        error = f"{why}RunInterrupted: it ended before its commit; committed by run {current}"
        if rt.store.exists(plan_key(sync_name, run.run_id)):
            recovered.append(commit_run(rt, sync_name, run.run_id, error))
        else:
            run.status, run.error, run.settled = "failed", error.replace("its commit", "its plan"), True
            finish(run)
            rt.record_run(run)
    return recovered


def end_unsettled(
    rt: Runtime, sync_name: str, run_id: str, started_at: str, status: str, error: str
) -> RunRecord:
    """Record a run that ended before its commit; unsettled when it planned (the next run commits
    what it delivered), settled when it had nothing to deliver."""
    record = RunRecord(sync_name, run_id, status, started_at, error=error)
    record.settled = not rt.store.exists(plan_key(sync_name, run_id))
    finish(record)
    rt.record_run(record)
    log.info(status, extra={"sync": sync_name, "run_id": run_id})
    return record


# ---- replay ----------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    delivered: int = 0
    rejected: int = 0
    stale: int = 0


def replay(rt: Runtime, sync_name: str, letters: list[DeadLetter]) -> ReplayResult:
    """Deliver dead letters again under the sync's run lock; a letter whose record a later run (or
    replay) already wrote is stale and dropped. Raises RunInProgress while a run holds the lock."""
    sync = rt.project.sync(sync_name)
    target = destination_target(sync)
    replay_id = f"replay-{utcnow():%Y%m%dT%H%M%S}-{random_tokens.token_hex(3)}"
    result = ReplayResult()
    try:
        rt.state.acquire(sync_name, replay_id)
    except RunInProgress:
        raise RunInProgress(
            f"sync {sync_name}: a run is in progress; replay when it has committed (nothing was sent)"
        ) from None
    try:
        return _replay(rt, sync, letters, replay_id, target, result)
    finally:
        rt.state.release(sync_name, replay_id)


def _replay(
    rt: Runtime, sync: SyncSpec, letters: list[DeadLetter], replay_id: str, target: str, result: ReplayResult
) -> ReplayResult:
    sync_name = sync.name
    started = utcnow()
    with rt.warehouse(sync) as warehouse:
        newest: dict[str, DeadLetter] = {}
        for letter in letters:
            if letter.target not in ("", target) or newest.get(letter.key, letter).version > letter.version:
                result.stale += 1
            else:
                if letter.key in newest:
                    result.stale += 1  # an older letter of the same key
                newest[letter.key] = letter
        current = read_snapshot(warehouse, rt.tables(sync), list(newest))
        fresh = [d for d in newest.values() if d.key not in current or current[d.key].version < d.version]
        result.stale += len(newest) - len(fresh)
        changes = {d.key: _as_change(d, current.get(d.key)) for d in fresh}
        destination = rt.destination(sync)
        try:
            outcomes = Delivery(destination, rt.budget(sync), rt.retry).deliver(
                list(changes.values()), replay_id
            )
        finally:
            destination.close()
        by_key = {d.key: d for d in fresh}
        rows, again = [], []
        for outcome in outcomes:
            letter, change = by_key[outcome.key], changes[outcome.key]
            if outcome.status == "rejected":
                result.rejected += 1
                again.append(dead_letter(sync_name, letter.run_id, letter.version, target, change, outcome))
            result.delivered += outcome.status == "delivered"
            rows.append(outcome_row(outcome, change, seq=0, version=letter.version, batch=0))
        tables = rt.tables(sync)
        stage = outcome_stage(warehouse, tables)
        try:
            stage_rows(warehouse, stage, rows)
            now = utcnow()
            log_outcomes(warehouse, tables, stage, replay_id, target, *_fields_sent(sync), now)
            apply_outcomes(warehouse, tables, stage, replay_id, target, now)
        finally:
            warehouse.execute(f"drop table if exists {stage}")
        record = RunRecord(
            sync_name,
            replay_id,
            "partial" if result.rejected else "succeeded",
            started.isoformat(),
            delivered=result.delivered,
            rejected=result.rejected,
            skipped=len(outcomes) - result.delivered - result.rejected,
            trigger="replay",
        )
        finish(record)
        log_run(warehouse, tables, record, rt.project.config.state.retention_days)
    rejected_keys = {d.key for d in again}
    rt.state.resolve_dead_letters(sync_name, [d.key for d in letters if d.key not in rejected_keys])
    rt.state.put_dead_letters(sync_name, again)
    return result


def _as_change(letter: DeadLetter, entry: object) -> Change:
    # the snapshot's destination id is at least as current as the letter's
    destination_id = getattr(entry, "destination_id", None) or letter.destination_id
    return Change(letter.key, letter.action, letter.row_hash, letter.record, destination_id, letter.identity)  # type: ignore[arg-type]
