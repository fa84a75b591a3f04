"""The steps of a run as the state machine takes them, one Lambda invocation each.

Plan takes the sync's run lock (``StateStore.acquire``, keyed by the run id) and writes the
manifest; Commit records the run and releases the lock; the lock outlives the invocations in
between. Also here: what a trigger event asks for, and the records of a batch that the state
machine sent to the dead-letter queue whole. Handlers parse their event and call one of these.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from syncback.batches import change_from_json, manifest, manifest_key, plan_key, spec_key
from syncback.commit import RECOVER_WINDOW, ReplayResult, commit_run, counted, end_unsettled, recover, replay
from syncback.errors import PermanentError, RunInProgress, SyncbackError
from syncback.planner import PHASES
from syncback.runner import plan_run
from syncback.runtime import Runtime, utcnow
from syncback.spec import Project
from syncback.state import DeadLetter, RunRecord

# ---- the state machine's steps: a run that spans three Lambda invocations ------------------------


class StartedRun(BaseModel):
    """What Plan hands the state machine: keys and counts, never rows."""

    sync: str
    run_id: str
    bucket: str
    manifest: str  # phase 1: writes by id, archives, identifiers given up
    batches: int
    second_manifest: str  # phase 2: records taking identifiers that phase 1 gave up
    second_batches: int
    changes: int
    concurrency: int
    deadline: str  # deliveries stop starting requests then, so that Commit runs before the timeout
    owner: str | None = None  # the sync's, for the run's events
    trigger: str = ""  # what started the run


#: of an execution's timeout, the part kept for Commit (and a last slow request) at the end
COMMIT_RESERVE_SHARE, COMMIT_RESERVE_MIN_S = 0.1, 300.0


def run_deadline(started_at: str, timeout_s: float) -> str:
    """Return when the deliveries of an execution started at ``started_at`` must stop starting requests."""
    started = dt.datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    reserve = max(COMMIT_RESERVE_MIN_S, COMMIT_RESERVE_SHARE * timeout_s)
    return (started + dt.timedelta(seconds=max(timeout_s - reserve, 0))).isoformat()


def run_id_for(execution: str, started_at: str) -> str:
    """Return the run id of a SyncRun execution: its start time and a digest of its name, so that a
    retried Plan, and every later step, name the same run; run ids sort by start time."""
    started = dt.datetime.fromisoformat(started_at.replace("Z", "+00:00")).astimezone(dt.UTC)
    return f"{started:%Y%m%dT%H%M%SZ}-{hashlib.sha256(execution.encode()).hexdigest()[:6]}"


def start_run(
    rt: Runtime,
    bucket: str,
    sync: str,
    run_id: str,
    full_resync: bool,
    max_concurrency: int,
    deadline: str = "",
    trigger: str = "",
) -> StartedRun:
    """Take the sync's lock, record the run as running, commit what earlier runs left, plan, write
    the manifests. A skipped or permanently failed start is recorded, then raised for the state
    machine to match by name; a transient failure keeps the lock for the state machine's retry
    (the same run id takes it again)."""
    state = rt.state
    started = utcnow().isoformat()
    try:
        state.acquire(sync, run_id)
    except RunInProgress as exc:
        rt.record_run(RunRecord(sync, run_id, "skipped", started, finished_at=started, error=str(exc)))
        raise
    try:
        rt.record_run(RunRecord(sync, run_id, "running", started, settled=False, trigger=trigger))
        recover(rt, sync, run_id)
        plan = plan_run(rt, sync, run_id, full_resync, trigger=trigger)
        rt.store.put_json(spec_key(sync, run_id), rt.project.pinned(sync))
        for phase in PHASES:
            rt.store.put_json(manifest_key(sync, run_id, phase), manifest(plan, phase))
    except PermanentError as exc:
        end_unsettled(rt, sync, run_id, started, "failed", f"{type(exc).__name__}: {exc}")
        state.release(sync, run_id)
        raise
    concurrency = min(rt.project.sync(sync).destination.concurrency, max_concurrency)
    return StartedRun(
        sync=sync,
        run_id=run_id,
        bucket=bucket,
        manifest=manifest_key(sync, run_id, 1),
        batches=len(plan.batches_of(1)),
        second_manifest=manifest_key(sync, run_id, 2),
        second_batches=len(plan.batches_of(2)),
        changes=plan.counts.changes,
        concurrency=concurrency,
        deadline=deadline,
        owner=rt.project.sync(sync).owner,
        trigger=trigger,
    )


def finish_run(rt: Runtime, sync: str, run_id: str, error: str | None = None) -> RunRecord:
    """Commit the run and give its lock back."""
    state = rt.state
    try:
        return commit_run(rt, sync, run_id, error)
    finally:
        state.release(sync, run_id)


def run_metrics(record: RunRecord) -> dict[str, float]:
    """Return the figures Commit publishes for a run (CloudWatch, per sync); the sync's alarms
    (``infra/render_schedules.py``) watch them, one value of each per run."""
    return {
        "delivered": record.delivered,
        "rejected": record.rejected,
        "skipped": record.skipped,
        "undelivered": record.undelivered,
        "invalid": record.planned.get("invalid", 0),
        "model_rows": record.model_rows,
        "run_failed": int(record.status == "failed"),
        "run_succeeded": int(record.good),
        "run_duration": record.duration_s,
    }


def abandon_run(rt: Runtime, sync: str, run_id: str, error: str) -> RunRecord:
    """Record a run that cannot finish (its Plan or Commit failed for good, or was killed) as failed
    and give its lock back, touching no warehouse; the next run commits what it delivered."""
    started = next(
        (r.started_at for r in rt.state.runs(sync, limit=RECOVER_WINDOW) if r.run_id == run_id), ""
    )
    try:
        return end_unsettled(rt, sync, run_id, started or utcnow().isoformat(), "failed", error)
    finally:
        rt.state.release(sync, run_id)


def run_ended(rt: Runtime, detail: Mapping[str, Any]) -> RunRecord:
    """Record a SyncRun execution that timed out or was aborted (no state of it ran after) as failed
    and free its lock; ``detail`` is EventBridge's Step Functions Execution Status Change."""
    started = dt.datetime.fromtimestamp(int(detail["startDate"]) / 1000, dt.UTC).isoformat()
    sync = SyncRequest.model_validate_json(detail["input"]).sync
    why = f"RunEnded: the execution {detail['status'].lower().replace('_', ' ')}; the next run commits what it delivered"
    return abandon_run(rt, sync, run_id_for(detail["name"], started), why)


# ---- what a trigger asks for ------------------------------------------------------------------


class SyncRequest(BaseModel):
    """A request to run one sync: an SQS sync-request message, or a direct call of the trigger."""

    sync: str
    full_resync: bool = False
    #: what asks: schedule (the template's schedules), queue (an SQS sync request), dbt (a dbt run's
    #: results), request (a direct call)
    trigger: str = "request"


def requested_runs(event: Mapping[str, Any], rt: Runtime) -> list[SyncRequest]:
    """Return the runs a trigger event asks for: a direct call, SQS sync requests, or an S3 Object
    Created event (EventBridge) for a dbt ``run_results.json`` in the batch bucket.

    Every sync named must exist (ConfigError otherwise), so a typo fails the request, not a run.
    """
    if "sync" in event:
        requests = [SyncRequest.model_validate(event)]
    elif event.get("source") == "aws.s3":
        run_results = rt.store.get_json(event["detail"]["object"]["key"])
        requests = [
            SyncRequest(sync=name, trigger="dbt") for name in syncs_named_by_dbt(rt.project, run_results)
        ]
    else:
        requests = [
            SyncRequest.model_validate({"trigger": "queue", **json.loads(r["body"])})
            for r in event.get("Records", [])
        ]
    for request in requests:
        rt.project.sync(request.sync)
    return requests


def syncs_named_by_dbt(project: Project, run_results: Mapping[str, Any]) -> list[str]:
    """Return the syncs whose model reads a dbt model that ``run_results.json`` reports as built."""
    built = {
        str(result.get("unique_id", "")).rsplit(".", 1)[-1].lower()
        for result in run_results.get("results", [])
        if result.get("status") == "success" and str(result.get("unique_id", "")).startswith("model.")
    }
    names = []
    for name, spec in sorted(project.syncs.items()):
        words = {w.strip('"`').rsplit(".", 1)[-1].lower() for w in spec.model_sql.replace(",", " ").split()}
        if built & words:
            names.append(name)
    return names


# ---- replay: what a dead-letter queue message holds ---------------------------------------------


class FailedBatch(BaseModel):
    """The message the state machine sends to the dead-letter queue when a batch fails whole."""

    sync: str
    run_id: str
    batch: str
    error: str
    cause: str = ""
    failed_at: str


def letters_of_failed_batch(rt: Runtime, failed: FailedBatch) -> list[DeadLetter]:
    """Return the records of a batch that failed whole, as dead letters ready for ``replay``."""
    batch = rt.store.get_json(failed.batch)
    target = rt.store.get_json(plan_key(failed.sync, failed.run_id)).get("target", "")
    reason = f"{failed.error}: the whole batch failed"
    return [
        DeadLetter(
            failed.sync,
            failed.run_id,
            c.key,
            c.action,
            c.row_hash,
            c.destination_id,
            dict(c.record),
            reason,
            failed.failed_at,
            batch.get("version", 0),
            c.identity,
            target,
        )
        for c in map(change_from_json, batch["changes"])
        if counted(c)
    ]


def letters_of_message(rt: Runtime, body: str) -> tuple[str, list[DeadLetter]]:
    """Return the sync and the dead letters a dead-letter queue message holds: one rejected record
    (a DeadLetter), or every record of a batch that failed whole (a FailedBatch)."""
    document = json.loads(body)
    if "batch" in document:
        failed = FailedBatch.model_validate(document)
        return failed.sync, letters_of_failed_batch(rt, failed)
    letter = DeadLetter(**document)
    return letter.sync, [letter]


def replay_messages(
    rt: Runtime, messages: Sequence[tuple[str, str]]
) -> tuple[list[str], dict[str, ReplayResult]]:
    """Replay a batch of dead-letter queue messages ``(message id, body)``, one replay (one run lock,
    one warehouse connection, requests of the destination's size) per sync; return the ids of the
    messages to hand back to SQS (unreadable, or their sync's replay failed: a run held the lock),
    and each sync's result."""
    failed: list[str] = []
    by_sync: dict[str, list[tuple[str, list[DeadLetter]]]] = {}
    for message_id, body in messages:
        try:
            sync, letters = letters_of_message(rt, body)
            rt.project.sync(sync)
        except (ValueError, KeyError, SyncbackError):
            failed.append(message_id)
            continue
        by_sync.setdefault(sync, []).append((message_id, letters))
    results = {}
    for sync, items in by_sync.items():
        try:
            results[sync] = replay(rt, sync, [letter for _, letters in items for letter in letters])
        except SyncbackError:
            failed += [message_id for message_id, _ in items]
    return failed, results
