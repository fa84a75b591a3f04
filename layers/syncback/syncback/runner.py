"""The use cases of a run, plan → deliver → commit, and one local run that chains them.

The Lambda handlers call ``plan_run``, ``deliver_batch`` and ``commit.commit_run`` one step at a
time (the state machine chains them); ``run_sync`` chains them in-process for local use, with the
batches of each phase delivered by a pool of threads sharing one rate budget. A local run first
commits any earlier run of the sync that a crash left uncommitted, so what it delivered is known.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from syncback.batches import Journal, LocalBatchStore, jobs_key, journal_key, receipt_key
from syncback.commit import answers, commit_run, end_unsettled, planned, recover
from syncback.delivery import Delivery, Interrupt, Job, JobBatch, outcome_to_json, receipt
from syncback.destinations.base import Change, Destination, JobDestination, Outcome, works_in_jobs
from syncback.errors import RunInProgress, SyncbackError
from syncback.planner import PHASES, BatchRef, Planner, PlanResult, change_from_json
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
    destination: Destination | JobDestination | None = None,
    on_progress: Callable[[int], None] | None = None,
    interrupt: Interrupt | None = None,
) -> list[Outcome]:
    """Deliver one stored batch and store its receipt; return the outcomes.

    The receipt is the idempotency record of (run, batch): delivering a batch again (a Lambda or
    Step Functions retry) sends only what its receipt does not answer yet. A delivery that stops
    (interrupted, out of time, or failing) still stores a receipt of what it did, with the rest
    ``undelivered``, before it returns or raises; where the store keeps a journal (locally) every
    answer is also appended as it comes, so a process killed mid-batch loses no answer it had.
    ``destination`` may be shared by the batches of a run (its connections are reused); without
    one, a client is made for this batch and closed after it. A destination that works in jobs
    is polled here until its jobs are done: see ``deliver_pass`` for one pass at a time.
    """
    outcomes, _ = _deliver(rt, sync_name, batch, destination, on_progress, interrupt, wait=True)
    return outcomes


def deliver_pass(
    rt: Runtime, sync_name: str, batch: str, interrupt: Interrupt | None = None
) -> tuple[list[Outcome], float | None]:
    """Take one pass at delivering a batch, as ``deliver_batch`` does, without waiting for jobs:
    return the outcomes so far and, while jobs of a destination that works in jobs are under way,
    the seconds to wait before the next pass (None when the batch is done). The state machine
    waits in a Wait state between passes, so no Lambda idles while a job runs."""
    return _deliver(rt, sync_name, batch, None, None, interrupt, wait=False)


class _Batch:
    """A stored batch being delivered: its changes, the answers it has (from its journal or
    receipt, then as they come), and its receipt."""

    def __init__(self, rt: Runtime, key: str) -> None:
        self.rt, self.key = rt, key
        self.changes = [change_from_json(item) for item in rt.store.get_json(key)["changes"]]
        self.answered = {o.key: o for o in answers(rt, key)}
        self._journal = rt.store if isinstance(rt.store, Journal) else None

    @property
    def complete(self) -> bool:
        return all(c.key in self.answered for c in self.changes)

    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.key not in self.answered]

    def keep(self, outcomes: list[Outcome]) -> None:
        self.answered.update((o.key, o) for o in outcomes)
        if self._journal is not None and outcomes:
            self._journal.append_lines(journal_key(self.key), [outcome_to_json(o) for o in outcomes])

    def store_receipt(self, why: str, error: str | None = None) -> list[Outcome]:
        outcomes = [
            self.answered.get(c.key) or Outcome(c.key, "undelivered", reason=why) for c in self.changes
        ]
        self.rt.store.put_json(receipt_key(self.key), receipt(self.key, outcomes, self.changes, error))
        return outcomes

    def jobs(self) -> JobBatch:
        """Return the batch as passes over its jobs see it, with the jobs kept beside it (``jobs_key``)
        so that a later pass, or a retried one, submits nothing twice."""
        key = jobs_key(self.key)
        jobs: list[Job] = self.rt.store.get_json(key) if self.rt.store.exists(key) else []
        return JobBatch(
            self.key, self.pending(), jobs, lambda running: self.rt.store.put_json(key, running), self.keep
        )

    def log(self, pending: float | None, outcomes: list[Outcome], sync_name: str) -> None:
        statuses = [o.status for o in outcomes]
        log.info(
            "delivered batch" if pending is None else "batch waits for its jobs",
            extra={
                "sync": sync_name,
                "batch": self.key,
                **{s: statuses.count(s) for s in ("delivered", "rejected", "skipped", "undelivered")},
            },
        )


def _deliver(
    rt: Runtime,
    sync_name: str,
    batch: str,
    destination: Destination | JobDestination | None,
    on_progress: Callable[[int], None] | None,
    interrupt: Interrupt | None,
    wait: bool,
) -> tuple[list[Outcome], float | None]:
    sync = rt.project.sync(sync_name)
    stored = _Batch(rt, batch)
    if stored.complete:
        return [stored.answered[c.key] for c in stored.changes], None
    interrupt = interrupt or Interrupt()
    why = "not sent: the delivery stopped before it"
    client = destination or rt.destination(sync)
    pending: float | None = None
    try:
        delivery = Delivery(
            client,
            rt.budget(sync),
            rt.retry,
            on_progress=on_progress,
            on_outcomes=stored.keep,
            interrupt=interrupt,
        )
        if works_in_jobs(client):
            # batches delivered side by side (the state machine's map) share the destination's jobs
            share = max(1, client.max_jobs // sync.destination.concurrency)
            pending = delivery.run_jobs(stored.jobs(), wait, share)
        else:
            delivery.deliver(stored.pending(), batch)
    except SyncbackError as exc:
        why = f"not sent: {type(exc).__name__}"
        # what was done stays done; a retry sends the rest
        stored.store_receipt(why, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if destination is None:
            client.close()
    if interrupt.is_set:
        why = f"not sent: {interrupt.reason}"
    outcomes = stored.store_receipt(why)
    stored.log(pending, outcomes, sync_name)
    return outcomes, pending


def _deliver_pool(
    rt: Runtime,
    sync: SyncSpec,
    destination: JobDestination,
    batches: list[BatchRef],
    on_progress: Callable[[int], None],
    interrupt: Interrupt,
) -> str | None:
    """Deliver the batches of a destination that works in jobs through one pool of jobs, on this
    thread: every pass polls the jobs of every open batch in one request and submits while the
    destination takes more jobs, opening the next batch as soon as the open ones have all their
    changes under way, so the destination's job queue never idles at the end of a batch. A batch
    stores its receipt when its last job is done (or the delivery stops); return the error that
    stopped the delivery, or None."""
    waiting = deque(ref.key for ref in batches)
    open_: list[tuple[_Batch, JobBatch]] = []
    delivery = Delivery(destination, rt.budget(sync), rt.retry, on_progress=on_progress, interrupt=interrupt)

    def more() -> JobBatch | None:
        while waiting and not interrupt.is_set:
            stored = _Batch(rt, waiting.popleft())
            if stored.complete:  # answered by an earlier delivery: its receipt is there
                continue
            open_.append((stored, stored.jobs()))
            return open_[-1][1]
        return None

    def close(done: list[tuple[_Batch, JobBatch]], why: str, error: str | None = None) -> None:
        for stored, jobs in done:
            jobs.save(jobs.jobs)
            stored.log(None, stored.store_receipt(why, error), sync.name)
            open_.remove((stored, jobs))

    try:
        while not interrupt.is_set:
            started = time.monotonic()
            delivery.advance_jobs([jobs for _, jobs in open_], more, workers=sync.destination.concurrency)
            for _, jobs in open_:
                jobs.save(jobs.jobs)
            close([(s, j) for s, j in open_ if j.done], "not sent: the delivery stopped before it")
            if not open_ and not waiting:
                return None
            # the pass submitted all it could: the destination's queue is full, or every change is in
            # it; the next poll comes ``poll_s`` after this one (a long pass has waited already)
            interrupt.sleep(max(0.0, destination.poll_s - (time.monotonic() - started)))
    except SyncbackError as exc:
        close(list(open_), f"not sent: {type(exc).__name__}", f"{type(exc).__name__}: {exc}")
        return f"{type(exc).__name__}: {exc}"
    close(list(open_), f"not sent: {interrupt.reason}")
    return None


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
        rt.state.record_run(RunRecord(sync_name, run_id, "running", started.isoformat(), settled=False))
        with rt.holding(sync):
            recover(rt, sync_name, run_id)
            destination = rt.destination(sync)  # first: a missing secret stops the run before a query
            try:
                plan = plan_run(rt, sync_name, run_id, full_resync, started.isoformat())
                progress.start(plan.counts.changes)
                error = None
                for phase in PHASES:
                    error = _deliver_all(rt, sync, destination, plan.batches_of(phase), progress, interrupt)
                    if error is not None or interrupt.is_set:
                        break  # the next phase would meet identifiers not yet given up
            finally:
                destination.close()
            progress.finish()
            cancelled = interrupt.is_set and error is None
            reason = f"RunCancelled: {interrupt.reason}" if cancelled else error
            record = commit_run(rt, sync_name, run_id, reason, cancelled)
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
) -> str | None:
    """Deliver the batches on ``destination.concurrency`` threads (a destination that works in
    jobs: through one pool of jobs, ``_deliver_pool``); return the error that stopped them, or
    None. An error or an interrupt stops every thread from starting requests; requests under way
    get ``GRACE_S`` to finish, then are abandoned (their threads are daemons)."""
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            progress.advance(n)

    if works_in_jobs(destination):  # one pool of jobs for the whole sync
        return _deliver_pool(rt, sync, destination, batches, advance, interrupt)
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
