"""The use cases of a run, plan → deliver → commit, and replay; and one local run that chains them.

The Lambda handlers call ``plan_run``, ``deliver_batch``, ``commit_run`` and ``replay`` one step
at a time (the state machine chains them); ``run_sync`` chains them in-process for local use, with
batches delivered by a pool of threads sharing one rate budget.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets as random_tokens
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from syncback.batches import BatchStore, plan_key, receipt_key
from syncback.delivery import Budget, Delivery, RateBudget, RetryPolicy, outcomes_from_receipt, receipt
from syncback.destinations import build_destination, request_budget
from syncback.destinations.base import Change, Destination, Outcome
from syncback.errors import RunInProgress, SyncbackError
from syncback.planner import Planner, PlanResult, change_from_json
from syncback.secrets import SecretResolver
from syncback.snapshot import SnapshotTables, advance_snapshot, read_snapshot
from syncback.spec import Project, SyncSpec
from syncback.state import DeadLetter, RunRecord, StateStore
from syncback.warehouses import connect
from syncback.warehouses.base import Warehouse

SAMPLE = 20
# keys and counts only: record values and secrets never reach a log line (DESIGN invariant 7)
log = logging.getLogger("syncback")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_run_id(now: dt.datetime | None = None) -> str:
    """Return a run id that sorts by start time: ``20261123T101500Z-3f9a1c``."""
    return f"{(now or utcnow()):%Y%m%dT%H%M%SZ}-{random_tokens.token_hex(3)}"


@dataclass
class Runtime:
    """What the use cases run against: the project and the stores, injected."""

    project: Project
    store: BatchStore
    state: StateStore
    secrets: SecretResolver = field(default_factory=SecretResolver)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    destination_factory: Callable[[SyncSpec], Destination] | None = None
    budget_factory: Callable[[str, int, float], Budget] | None = None
    budgets: dict[str, Budget] = field(default_factory=dict)

    @contextlib.contextmanager
    def warehouse(self, sync: SyncSpec) -> Iterator[Warehouse]:
        config = self.project.config.warehouses[sync.warehouse]
        warehouse = connect(sync.warehouse, config, self.project.root, self.secrets)
        try:
            yield warehouse
        finally:
            warehouse.close()

    def tables(self, sync: SyncSpec) -> SnapshotTables:
        return SnapshotTables(self.project.config.state.schema_, sync.name)

    def destination(self, sync: SyncSpec) -> Destination:
        if self.destination_factory is not None:
            return self.destination_factory(sync)
        return build_destination(sync, self.secrets)

    def budget(self, sync: SyncSpec) -> Budget | None:
        """Return the one rate budget every delivery of this destination shares.

        Locally a budget shared by the run's threads; ``budget_factory`` gives another kind (the
        DynamoDB one that concurrent Lambdas share).
        """
        limit = request_budget(sync)
        if limit is None:
            return None
        account, requests, per_seconds = limit
        if account not in self.budgets:
            if self.budget_factory is not None:
                self.budgets[account] = self.budget_factory(account, requests, per_seconds)
            else:
                self.budgets[account] = RateBudget(requests, per_seconds)
        return self.budgets[account]


# ---- the steps -----------------------------------------------------------------------------


def plan_run(
    rt: Runtime, sync_name: str, run_id: str, full_resync: bool = False, started: dt.datetime | None = None
) -> PlanResult:
    """Plan a run and write its batches; the snapshot is untouched."""
    sync = rt.project.sync(sync_name)
    with rt.warehouse(sync) as warehouse:
        planner = Planner(sync, warehouse, rt.project.config.state.schema_)
        plan = planner.plan(run_id, rt.store, full_resync, started_at=(started or utcnow()).isoformat())
    log.info(
        "planned",
        extra={"sync": sync_name, "run_id": run_id, "counts": _planned(plan), "batches": len(plan.batches)},
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
    receipt and sends nothing: the receipt is the idempotency record of (run, batch). A delivery
    cut off before its receipt was stored is sent again; upserts by the destination's identifier
    make that harmless, and an insert meets the destination's conflict and is skipped.
    ``destination`` may be shared by the batches of a run (its connections are reused);
    without one, a client is made for this batch and closed after it.
    """
    sync = rt.project.sync(sync_name)
    if rt.store.exists(receipt_key(batch)):
        return outcomes_from_receipt(rt.store.get_json(receipt_key(batch)))
    changes = [change_from_json(item) for item in rt.store.get_json(batch)["changes"]]
    client = destination or rt.destination(sync)
    try:
        outcomes = Delivery(client, rt.budget(sync), rt.retry, on_progress=on_progress).deliver(changes)
    finally:
        if destination is None:
            client.close()
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


def commit_run(rt: Runtime, sync_name: str, run_id: str, error: str | None = None) -> RunRecord:
    """Advance the snapshot by what was delivered, keep the dead letters, record the run."""
    sync = rt.project.sync(sync_name)
    plan = PlanResult.from_json(rt.store.get_json(plan_key(sync_name, run_id)))
    puts: list[tuple[str, str, str | None]] = []
    deletes: list[str] = []
    settled: list[str] = []
    letters: list[DeadLetter] = []
    now = utcnow()
    record = RunRecord(sync_name, run_id, "succeeded", plan.started_at, planned=_planned(plan), error=error)
    record.invalid_sample = [{"key": r.key, "reason": r.reason} for r in plan.invalid_sample]
    for ref in plan.batches:
        if not rt.store.exists(receipt_key(ref.key)):
            record.undelivered += ref.count  # the run failed before this batch: planned again next run
            continue
        changes = {c.key: c for c in map(change_from_json, rt.store.get_json(ref.key)["changes"])}
        for outcome in outcomes_from_receipt(rt.store.get_json(receipt_key(ref.key))):
            change = changes[outcome.key]
            if outcome.status == "rejected":
                record.rejected += 1
                letters.append(_dead_letter(sync_name, run_id, change, outcome, now))
                continue
            settled.append(change.key)
            if outcome.status == "delivered":
                record.delivered += 1
            else:
                record.skipped += 1
            if change.action in ("archive", "forget"):
                deletes.append(change.key)
            elif outcome.status == "delivered" or change.action == "keep" or outcome.destination_id:
                assert change.row_hash is not None
                puts.append((change.key, change.row_hash, outcome.destination_id))
    with rt.warehouse(sync) as warehouse:
        advance_snapshot(warehouse, rt.tables(sync), run_id, puts, deletes, now)
    rt.state.put_dead_letters(sync_name, letters)
    rt.state.resolve_dead_letters(sync_name, settled)
    record.rejected_sample = [{"key": d.key, "reason": d.reason} for d in letters[:SAMPLE]]
    if error is not None:
        record.status = "failed"
    elif record.rejected or record.undelivered:
        record.status = "partial"
    _finish(record)
    rt.state.record_run(record)
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


def _planned(plan: PlanResult) -> dict[str, int]:
    c = plan.counts
    return {
        "added": c.added,
        "changed": c.changed,
        "removed": c.removed,
        "unchanged": c.unchanged,
        "invalid": c.invalid,
    }


def _dead_letter(sync: str, run_id: str, change: Change, outcome: Outcome, now: dt.datetime) -> DeadLetter:
    return DeadLetter(
        sync,
        run_id,
        change.key,
        change.action,
        change.row_hash,
        change.destination_id,
        change.record,
        outcome.reason or "rejected",
        now.isoformat(),
    )


def _finish(record: RunRecord) -> None:
    now = utcnow()
    record.finished_at = now.isoformat()
    if record.started_at:
        record.duration_s = round((now - dt.datetime.fromisoformat(record.started_at)).total_seconds(), 3)


# ---- one local run -------------------------------------------------------------------------


class Progress:
    """Receives progress while a run delivers; the CLI draws a bar with it."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


def run_sync(
    rt: Runtime, sync_name: str, full_resync: bool = False, progress: Progress | None = None
) -> RunRecord:
    """Run one sync here and now: plan, deliver every batch in parallel, commit.

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
        return _record_early_end(rt, sync_name, run_id, started, "skipped", str(exc))
    try:
        # made first, so that a missing secret stops the run before the warehouse is queried
        destination = rt.destination(sync)
        try:
            plan = plan_run(rt, sync_name, run_id, full_resync, started)
        except SyncbackError as exc:
            _record_early_end(rt, sync_name, run_id, started, "failed", f"{type(exc).__name__}: {exc}")
            raise
        progress.start(plan.counts.changes)
        try:
            error = _deliver_all(rt, sync, destination, [b.key for b in plan.batches], progress)
        finally:
            destination.close()
        progress.finish()
        return commit_run(rt, sync_name, run_id, error)
    finally:
        rt.state.release(sync_name, run_id)


def _record_early_end(
    rt: Runtime, sync_name: str, run_id: str, started: dt.datetime, status: str, error: str
) -> RunRecord:
    """Record a run that ended before delivering anything; return its record."""
    record = RunRecord(sync_name, run_id, status, started.isoformat(), error=error)
    _finish(record)
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


# ---- replay --------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    delivered: int = 0
    rejected: int = 0
    stale: int = 0


def replay(rt: Runtime, sync_name: str, letters: list[DeadLetter]) -> ReplayResult:
    """Deliver dead letters again, skipping any whose record a later run already delivered."""
    sync = rt.project.sync(sync_name)
    result = ReplayResult()
    now = utcnow()
    with rt.warehouse(sync) as warehouse:
        current = read_snapshot(warehouse, rt.tables(sync), [d.key for d in letters])
        fresh: list[DeadLetter] = []
        for letter in letters:
            entry = current.get(letter.key)
            rejected_at = dt.datetime.fromisoformat(letter.rejected_at)
            committed = entry.committed_at.replace(tzinfo=dt.UTC) if entry else None
            if entry and (entry.row_hash == letter.row_hash or (committed and committed > rejected_at)):
                result.stale += 1
            else:
                fresh.append(letter)
        changes = [_as_change(d) for d in fresh]
        destination = rt.destination(sync)
        try:
            outcomes = Delivery(destination, rt.budget(sync), rt.retry).deliver(changes)
        finally:
            destination.close()
        by_key = {d.key: d for d in fresh}
        puts, deletes, settled, again = [], [], [d.key for d in letters if d not in fresh], []
        for outcome in outcomes:
            letter = by_key[outcome.key]
            if outcome.status == "rejected":
                result.rejected += 1
                again.append(_dead_letter(sync_name, letter.run_id, _as_change(letter), outcome, now))
                continue
            result.delivered += outcome.status == "delivered"
            settled.append(letter.key)
            if letter.action == "archive":
                deletes.append(letter.key)
            elif letter.row_hash is not None:
                puts.append((letter.key, letter.row_hash, outcome.destination_id))
        advance_snapshot(warehouse, rt.tables(sync), f"replay-{new_run_id(now)}", puts, deletes, now)
    rt.state.resolve_dead_letters(sync_name, settled)
    rt.state.put_dead_letters(sync_name, again)
    return result


def _as_change(letter: DeadLetter) -> Change:
    return Change(letter.key, letter.action, letter.row_hash, letter.record, letter.destination_id)  # type: ignore[arg-type]
