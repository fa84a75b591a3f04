"""The use cases of a run, plan → deliver → commit, and one local run that chains them.

The Lambda handlers call ``plan_run``, ``batch_delivery.deliver_pass`` and ``commit.commit_run`` one
step at a time (the state machine chains them); ``run_sync`` chains them in-process for local use, with the
batches of each phase delivered by a pool of threads sharing one rate budget. A local run first
commits any earlier run of the sync that a crash left uncommitted, so what it delivered is known.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator

from syncback.batch_delivery import deliver_batch, deliver_pool
from syncback.batches import BatchRef, LocalBatchStore
from syncback.commit import commit_run, end_unsettled, planned, recover
from syncback.delivery import Interrupt
from syncback.destinations.base import Destination, JobDestination, works_in_jobs
from syncback.errors import RunInProgress, SyncbackError
from syncback.planner import PHASES, Planner, PlanResult
from syncback.runtime import Runtime, new_run_id, utcnow
from syncback.spec import SyncSpec
from syncback.state import RunRecord

# keys and counts only: record values and secrets never reach a log line (DESIGN invariant 7)
log = logging.getLogger("syncback")


@contextlib.contextmanager
def planner_for(rt: Runtime, sync: SyncSpec) -> Iterator[Planner]:
    """Yield the sync's planner on its warehouse; where the warehouse gives the state schema
    credentials of its own, the model is read through a second connection with the models'."""
    config = rt.project.config.warehouses[sync.warehouse]
    access = getattr(config, "state_access", None)
    with rt.warehouse(sync) as warehouse, rt.models(sync) as models:
        yield Planner(
            sync, warehouse, rt.project.config.state.schema_, models, access.stage_schema if access else ""
        )


def plan_run(
    rt: Runtime,
    sync_name: str,
    run_id: str,
    full_resync: bool = False,
    started: str | None = None,
    trigger: str = "",
) -> PlanResult:
    """Plan a run and write its batches; the snapshot is untouched."""
    sync = rt.project.sync(sync_name)
    with planner_for(rt, sync) as planner:
        plan = planner.plan(
            run_id, rt.store, full_resync, started_at=started or utcnow().isoformat(), trigger=trigger
        )
    log.info(
        "planned",
        extra={"sync": sync_name, "run_id": run_id, "counts": planned(plan), "batches": len(plan.batches)},
    )
    return plan


# ---- one local run -------------------------------------------------------------------------


class Progress:
    """Receives progress while a run delivers; the CLI draws a bar with it."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


#: after an interrupt, how long requests under way may take to finish before they are abandoned
GRACE_S = 1.5


def run_sync(
    rt: Runtime,
    sync_name: str,
    full_resync: bool = False,
    progress: Progress | None = None,
    interrupt: Interrupt | None = None,
    trigger: str = "cli",
) -> RunRecord:
    """Run one sync here and now: plan, deliver every batch (phase by phase, in parallel), commit.

    Every run that starts is in the history: one that finds another run of the sync in progress is
    ``skipped``; one that fails (a missing secret, the warehouse, the destination, the commit) is
    ``failed`` with its error, and raised; one that ``interrupt`` stops (Ctrl-C) is committed with
    what it delivered and recorded ``cancelled``. The warehouse connection is held from plan to
    commit, so what was delivered is always committed, now or by the next run.
    """
    sync = rt.project.sync(sync_name)
    progress = progress or Progress()
    interrupt = interrupt or Interrupt()
    started = utcnow()
    run_id = new_run_id(started)
    try:
        rt.state.acquire(sync_name, run_id)
    except RunInProgress as exc:
        return end_unsettled(rt, sync_name, run_id, started.isoformat(), "skipped", str(exc))
    committed = False
    try:
        rt.record_run(
            RunRecord(sync_name, run_id, "running", started.isoformat(), settled=False, trigger=trigger)
        )
        with rt.holding(sync):
            recover(rt, sync_name, run_id)
            destination = rt.destination(sync)  # first: a missing secret stops the run before a query
            try:
                plan = plan_run(rt, sync_name, run_id, full_resync, started.isoformat(), trigger)
                progress.start(plan.counts.changes)
                error, sent = None, set[str]()
                for phase in PHASES:
                    batches = plan.batches_of(phase)
                    error = _deliver_all(rt, sync, destination, batches, progress, interrupt, sent)
                    if error is not None or interrupt.is_set:
                        break  # the next phase would meet identifiers not yet given up
            finally:
                destination.close()
            progress.finish()
            cancelled = interrupt.is_set and error is None
            reason = f"RunCancelled: {interrupt.reason}" if cancelled else error
            record = commit_run(rt, sync_name, run_id, reason, cancelled, sent)
            committed = True
        _tidy(rt, sync_name, run_id)
        return record
    except SyncbackError as exc:
        if not committed:
            # recorded now; what it delivered (if anything) is committed by the next run
            end_unsettled(
                rt, sync_name, run_id, started.isoformat(), "failed", f"{type(exc).__name__}: {exc}"
            )
        raise
    finally:
        rt.state.release(sync_name, run_id)


def _tidy(rt: Runtime, sync_name: str, run_id: str) -> None:
    if isinstance(rt.store, LocalBatchStore):
        rt.store.remove_batches(sync_name, run_id)


def _deliver_all(
    rt: Runtime,
    sync: SyncSpec,
    destination: Destination | JobDestination,
    batches: list[BatchRef],
    progress: Progress,
    interrupt: Interrupt,
    sent: set[str],
) -> str | None:
    """Deliver the batches on ``destination.concurrency`` threads (a destination that works in
    jobs: through one pool of jobs, ``_deliver_pool``); return the error that stopped them, or
    None. An error or an interrupt stops every thread from starting requests; requests under way
    get ``GRACE_S`` to finish, then are abandoned (their threads are daemons). The key of every
    batch whose delivery began is added to ``sent``: the others were never sent."""
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            progress.advance(n)

    if works_in_jobs(destination):  # one pool of jobs for the whole sync
        return deliver_pool(rt, sync, destination, batches, advance, interrupt, sent)
    pending: queue.SimpleQueue[str] = queue.SimpleQueue()
    for ref in batches:
        pending.put(ref.key)
    errors: list[BaseException] = []

    def work() -> None:
        while not interrupt.is_set:
            try:
                key = pending.get_nowait()
            except queue.Empty:
                return
            sent.add(key)
            try:
                deliver_batch(rt, sync.name, key, destination, advance, interrupt)
            except BaseException as exc:
                errors.append(exc)
                interrupt.set(f"another batch failed ({type(exc).__name__})")

    threads = [
        threading.Thread(target=work, daemon=True)
        for _ in range(min(sync.destination.concurrency, len(batches)))
    ]
    for thread in threads:
        thread.start()
    abandon_at: float | None = None
    for thread in threads:
        while thread.is_alive():
            thread.join(0.05)  # short waits: a signal handler runs on this thread meanwhile
            if interrupt.is_set and not errors:
                abandon_at = abandon_at or time.monotonic() + GRACE_S
                if time.monotonic() >= abandon_at:
                    return None
    if not errors:
        return None
    if isinstance(errors[0], SyncbackError):
        return f"{type(errors[0]).__name__}: {errors[0]}"
    raise errors[0]
