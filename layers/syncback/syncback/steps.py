"""The steps of a run as the state machine takes them, one Lambda invocation each.

Plan takes the sync's run lock (``StateStore.acquire``, keyed by the run id) and writes the
manifest; Commit records the run and releases the lock; the lock outlives the invocations in
between. Also here: what a trigger event asks for, and the records of a batch that the state
machine sent to the dead-letter queue whole. Handlers parse their event and call one of these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from syncback.batches import manifest, manifest_key, plan_key
from syncback.commit import commit_run, counted
from syncback.errors import PermanentError, RunInProgress
from syncback.planner import PHASES, change_from_json
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


def start_run(
    rt: Runtime, bucket: str, sync: str, run_id: str, full_resync: bool, max_concurrency: int
) -> StartedRun:
    """Take the sync's lock, plan, write the manifest; a skipped or permanently failed start is
    recorded in the run history, then raised for the state machine to match by name."""
    state = rt.state
    started = utcnow().isoformat()
    try:
        state.acquire(sync, run_id)
    except RunInProgress as exc:
        state.record_run(RunRecord(sync, run_id, "skipped", started, finished_at=started, error=str(exc)))
        raise
    try:
        plan = plan_run(rt, sync, run_id, full_resync)
        for phase in PHASES:
            rt.store.put_json(manifest_key(sync, run_id, phase), manifest(plan, phase))
    except Exception as exc:
        state.release(sync, run_id)
        # a transient failure is retried by the state machine: only a permanent one is the run's end
        if isinstance(exc, PermanentError):
            failed_at = utcnow().isoformat()
            error = f"{type(exc).__name__}: {exc}"
            state.record_run(RunRecord(sync, run_id, "failed", started, finished_at=failed_at, error=error))
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
    )


def finish_run(rt: Runtime, sync: str, run_id: str, error: str | None = None) -> RunRecord:
    """Commit the run and give its lock back."""
    state = rt.state
    try:
        return commit_run(rt, sync, run_id, error)
    finally:
        state.release(sync, run_id)


# ---- what a trigger asks for ------------------------------------------------------------------


class SyncRequest(BaseModel):
    """A request to run one sync: an SQS sync-request message, or a direct call of the trigger."""

    sync: str
    full_resync: bool = False


def requested_runs(event: Mapping[str, Any], rt: Runtime) -> list[SyncRequest]:
    """Return the runs a trigger event asks for: a direct call, SQS sync requests, or an S3 Object
    Created event (EventBridge) for a dbt ``run_results.json`` in the batch bucket.

    Every sync named must exist (ConfigError otherwise), so a typo fails the request, not a run.
    """
    if "sync" in event:
        requests = [SyncRequest.model_validate(event)]
    elif event.get("source") == "aws.s3":
        run_results = rt.store.get_json(event["detail"]["object"]["key"])
        requests = [SyncRequest(sync=name) for name in syncs_named_by_dbt(rt.project, run_results)]
    else:
        requests = [SyncRequest.model_validate_json(r["body"]) for r in event.get("Records", [])]
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
