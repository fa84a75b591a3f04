"""Delivering one stored batch: its changes, the answers it has, its receipt, and its jobs.

``deliver_batch`` and ``deliver_pass`` are what the deliver Lambda calls; ``deliver_pool`` delivers
the batches of a local run to a destination that works in jobs. The receipt is the idempotency
record of (run, batch): what it answers is never sent again. This module imports neither the
planner nor the commit, so a deliver Lambda's cold start does not load them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from syncback.batches import BatchRef, Journal, change_from_json, jobs_key, journal_key, receipt_key
from syncback.delivery import (
    Delivery,
    Interrupt,
    Job,
    JobBatch,
    outcome_from_json,
    outcome_to_json,
    outcomes_from_receipt,
    receipt,
)
from syncback.destinations.base import Change, Destination, JobDestination, Outcome, works_in_jobs
from syncback.errors import SyncbackError
from syncback.runtime import Runtime
from syncback.spec import SyncSpec

log = logging.getLogger("syncback")


def answers(rt: Runtime, batch: str) -> list[Outcome]:
    """Return what the destination answered for a batch: its receipt's and journal's outcomes (a
    delivery cut off keeps a journal locally, or a receipt with the rest undelivered), without
    those left undelivered."""
    found: dict[str, Outcome] = {}
    if rt.store.exists(receipt_key(batch)):
        found.update((o.key, o) for o in outcomes_from_receipt(rt.store.get_json(receipt_key(batch))))
    if isinstance(rt.store, Journal):
        found.update(
            (o.key, o) for o in map(outcome_from_json, rt.store.read_lines(journal_key(batch)) or [])
        )
    return [o for o in found.values() if o.status != "undelivered"]


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


def deliver_pool(
    rt: Runtime,
    sync: SyncSpec,
    destination: JobDestination,
    batches: list[BatchRef],
    on_progress: Callable[[int], None],
    interrupt: Interrupt,
    sent: set[str],
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
            sent.add(stored.key)
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
