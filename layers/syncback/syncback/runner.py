"""The use cases of a run, plan → deliver → commit, and one local run that chains them.

The Lambda handlers call ``plan_run``, ``deliver_batch`` and ``commit.commit_run`` one step at a
time (the state machine chains them); ``run_sync`` chains them in-process for local use, with the
batches of each phase delivered by a pool of threads sharing one rate budget. A local run first
commits any earlier run of the sync that a crash left uncommitted, so what it delivered is known.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from syncback.batches import Journal, LocalBatchStore, commit_key, journal_key, receipt_key
from syncback.commit import commit_run, finish, planned
from syncback.delivery import Delivery, outcome_from_json, outcome_to_json, outcomes_from_receipt, receipt
from syncback.destinations.base import Destination, Outcome
from syncback.errors import RunInProgress, SyncbackError
from syncback.planner import PHASES, Planner, PlanResult, change_from_json
from syncback.runtime import Runtime, new_run_id, utcnow
from syncback.spec import SyncSpec
from syncback.state import RunRecord

# keys and counts only: record values and secrets never reach a log line (DESIGN invariant 7)
log = logging.getLogger("syncback")


def plan_run(
    rt: Runtime, sync_name: str, run_id: str, full_resync: bool = False, started: str | None = None
) -> PlanResult:
    """Plan a run and write its batches; the snapshot is untouched."""
    sync = rt.project.sync(sync_name)
    with rt.warehouse(sync) as warehouse:
        planner = Planner(sync, warehouse, rt.project.config.state.schema_)
        plan = planner.plan(run_id, rt.store, full_resync, started_at=started or utcnow().isoformat())
    log.info(
        "planned",
        extra={"sync": sync_name, "run_id": run_id, "counts": planned(plan), "batches": len(plan.batches)},
    )
    return plan


def deliver_batch(
    rt: Runtime,
    sync_name: str,
    batch: str,
    destination: Destination | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[Outcome]:
    """Deliver one stored batch and store its receipt; return the outcomes.

    Delivering a batch again (a Lambda or Step Functions retry after a timeout) returns the stored
    receipt and sends nothing: the receipt is the idempotency record of (run, batch). Where the
    store keeps a journal (locally), the outcome of every request is appended to it as it comes, so
    that a process killed mid-batch loses no answer it had. A delivery cut off before its receipt
    was stored is sent again; upserts by the destination's id or identifier make that harmless.
    ``destination`` may be shared by the batches of a run (its connections are reused); without
    one, a client is made for this batch and closed after it.
    """
    sync = rt.project.sync(sync_name)
    if rt.store.exists(receipt_key(batch)):
        return outcomes_from_receipt(rt.store.get_json(receipt_key(batch)))
    changes = [change_from_json(item) for item in rt.store.get_json(batch)["changes"]]
    journal = rt.store if isinstance(rt.store, Journal) else None
    done: list[Outcome] = []
    if journal is not None:
        # a delivery cut off earlier: what it was answered stays; only the rest is sent
        done = [outcome_from_json(item) for item in journal.read_lines(journal_key(batch)) or []]
        answered = {o.key for o in done}
        changes = [c for c in changes if c.key not in answered]

    def keep(outcomes: list[Outcome]) -> None:
        if journal is not None and outcomes:
            journal.append_lines(journal_key(batch), [outcome_to_json(o) for o in outcomes])

    client = destination or rt.destination(sync)
    try:
        delivery = Delivery(client, rt.budget(sync), rt.retry, on_progress=on_progress, on_outcomes=keep)
        outcomes = delivery.deliver(changes, batch)
    finally:
        if destination is None:
            client.close()
    outcomes = [*done, *outcomes]
    rt.store.put_json(receipt_key(batch), receipt(batch, outcomes))
    statuses = [o.status for o in outcomes]
    log.info(
        "delivered batch",
        extra={
            "sync": sync_name,
            "batch": batch,
            "delivered": statuses.count("delivered"),
            "rejected": statuses.count("rejected"),
            "skipped": statuses.count("skipped"),
        },
    )
    return outcomes


# ---- one local run -------------------------------------------------------------------------


class Progress:
    """Receives progress while a run delivers; the CLI draws a bar with it."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


def run_sync(
    rt: Runtime, sync_name: str, full_resync: bool = False, progress: Progress | None = None
) -> RunRecord:
    """Run one sync here and now: plan, deliver every batch (phase by phase, in parallel), commit.

    A run that finds another run of the sync in progress is not started: it is recorded as
    ``skipped``, and returned.
    """
    sync = rt.project.sync(sync_name)
    progress = progress or Progress()
    started = utcnow()
    run_id = new_run_id(started)
    try:
        rt.state.acquire(sync_name, run_id)
    except RunInProgress as exc:
        return _record_early_end(rt, sync_name, run_id, started.isoformat(), "skipped", str(exc))
    try:
        recover(rt, sync_name)
        # made first, so that a missing secret stops the run before the warehouse is queried
        destination = rt.destination(sync)
        try:
            plan = plan_run(rt, sync_name, run_id, full_resync, started.isoformat())
        except SyncbackError as exc:
            destination.close()
            _record_early_end(
                rt, sync_name, run_id, started.isoformat(), "failed", f"{type(exc).__name__}: {exc}"
            )
            raise
        progress.start(plan.counts.changes)
        try:
            error = None
            for phase in PHASES:
                error = _deliver_all(rt, sync, destination, [b.key for b in plan.batches_of(phase)], progress)
                if error is not None:
                    break  # a phase cut short: the next phase would meet identifiers not yet released
        finally:
            destination.close()
        progress.finish()
        record = commit_run(rt, sync_name, run_id, error)
        _tidy(rt, sync_name, run_id)
        return record
    finally:
        rt.state.release(sync_name, run_id)


def recover(rt: Runtime, sync_name: str) -> list[RunRecord]:
    """Commit the runs of ``sync_name`` that a crash left planned but not committed (hold the lock).

    What they delivered is then in the snapshot (with the destination's ids, and whether it
    created each record), so the next plan sends only what is still missing.
    """
    store = rt.store
    if not isinstance(store, LocalBatchStore):
        return []  # on AWS the state machine commits every execution, failed ones included
    recovered = []
    for run_id in store.run_ids(sync_name):
        if store.exists(commit_key(sync_name, run_id)):
            continue
        error = "RunInterrupted: the process ended before the commit; committed by the next run"
        recovered.append(commit_run(rt, sync_name, run_id, error))
        _tidy(rt, sync_name, run_id)
    return recovered


def _tidy(rt: Runtime, sync_name: str, run_id: str) -> None:
    if isinstance(rt.store, LocalBatchStore):
        rt.store.remove_batches(sync_name, run_id)


def _record_early_end(
    rt: Runtime, sync_name: str, run_id: str, started: str, status: str, error: str
) -> RunRecord:
    """Record a run that ended before delivering anything; return its record."""
    record = RunRecord(sync_name, run_id, status, started, error=error)
    finish(record)
    rt.state.record_run(record)
    log.info(status, extra={"sync": sync_name, "run_id": run_id})
    return record


def _deliver_all(
    rt: Runtime, sync: SyncSpec, destination: Destination, batches: list[str], progress: Progress
) -> str | None:
    """Deliver every batch; return the error that stopped the run, or None."""
    lock = threading.Lock()
    stop = threading.Event()

    def advance(n: int) -> None:
        with lock:
            progress.advance(n)

    def deliver(key: str) -> None:
        if stop.is_set():
            return  # the run is stopping: leave this batch undelivered, planned again next run
        try:
            deliver_batch(rt, sync.name, key, destination, advance)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=sync.destination.concurrency) as pool:
        futures = [pool.submit(deliver, key) for key in batches]
        errors = [e for e in (f.exception() for f in futures) if e is not None]
    if not errors:
        return None
    if isinstance(errors[0], SyncbackError):
        return f"{type(errors[0]).__name__}: {errors[0]}"
    raise errors[0]
