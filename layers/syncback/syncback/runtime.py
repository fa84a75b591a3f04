"""What the use cases run against: the project, the stores, secrets, retries and rate budgets.

One ``Runtime`` per entry point (the CLI, each Lambda handler) is the composition root: it builds
the implementations, and the use cases in ``runner`` and ``commit`` receive it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets as random_tokens
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from syncback.batches import BatchStore
from syncback.delivery import Budget, RateBudget, RetryPolicy
from syncback.destinations.base import Destination, JobDestination
from syncback.destinations.registry import build_destination, request_budget
from syncback.secrets import SecretResolver
from syncback.spec import Project, SyncSpec
from syncback.state import RunRecord, StateStore

if TYPE_CHECKING:  # the warehouse side is imported where it is used: a deliver Lambda never is
    from syncback.snapshot import SnapshotTables
    from syncback.warehouses.base import Warehouse


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
    destination_factory: Callable[[SyncSpec], Destination | JobDestination] | None = None
    budget_factory: Callable[[str, int, float], Budget] | None = None
    budgets: dict[str, Budget] = field(default_factory=dict)
    held: dict[str, Warehouse] = field(default_factory=dict)

    @contextlib.contextmanager
    def warehouse(self, sync: SyncSpec) -> Iterator[Warehouse]:
        """Yield a connection to the sync's warehouse as the state schema reaches it (snapshots,
        history): the one ``holding`` keeps open, or a new one."""
        if sync.warehouse in self.held:
            yield self.held[sync.warehouse]
            return
        from syncback.warehouses import connect

        config = self.project.config.warehouses[sync.warehouse]
        warehouse = connect(sync.warehouse, config, self.project.root, self.secrets, state=True)
        try:
            yield warehouse
        finally:
            warehouse.close()

    @contextlib.contextmanager
    def models(self, sync: SyncSpec) -> Iterator[Warehouse | None]:
        """Yield a connection with the credentials that read models, where the sync's warehouse
        gives the state schema its own (``state_access``); None where one connection does both."""
        config = self.project.config.warehouses[sync.warehouse]
        if getattr(config, "state_access", None) is None:
            yield None
            return
        from syncback.warehouses import connect

        models = connect(sync.warehouse, config, self.project.root, self.secrets)
        try:
            yield models
        finally:
            models.close()

    @contextlib.contextmanager
    def holding(self, sync: SyncSpec) -> Iterator[None]:
        """Keep one connection to the sync's warehouse open for the block: a local run plans and
        commits on it, so another process cannot take the DuckDB file between its delivery and its
        commit (it waits, or fails before it sends anything)."""
        with self.warehouse(sync) as warehouse:
            self.held[sync.warehouse] = warehouse
            try:
                yield
            finally:
                del self.held[sync.warehouse]

    def record_run(self, record: RunRecord) -> None:
        """Record a run as it starts or ends, and send its lineage event (if the project asks)."""
        from syncback.lineage import emit

        self.state.record_run(record)
        emit(self.project, record, self.secrets)

    def tables(self, sync: SyncSpec) -> SnapshotTables:
        from syncback.snapshot import SnapshotTables

        return SnapshotTables(self.project.config.state.schema_, sync.name)

    def destination(self, sync: SyncSpec) -> Destination | JobDestination:
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
