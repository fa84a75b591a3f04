"""The snapshot: per sync, a warehouse table of every record last delivered, with its row hash.

``(key, row_hash, destination_id, committed_at, run_id)``. The planner diffs the model against it;
the commit advances it, and only for what the destination accepted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from syncback.warehouses.base import Warehouse


@dataclass(frozen=True)
class SnapshotTables:
    """The names of one sync's tables in the state schema."""

    schema: str
    sync: str

    @property
    def snapshot(self) -> str:
        return f"{self.schema}.snapshot__{self.sync}"

    @property
    def plan(self) -> str:
        return f"{self.schema}.plan__{self.sync}"

    @property
    def staging(self) -> str:
        return f"{self.schema}.commit__{self.sync}"


def ensure_snapshot(warehouse: Warehouse, tables: SnapshotTables) -> None:
    """Create the state schema and the sync's snapshot table if they do not exist yet."""
    warehouse.execute(f"create schema if not exists {tables.schema}")
    warehouse.execute(
        f"create table if not exists {tables.snapshot} (key varchar, row_hash varchar, "
        "destination_id varchar, committed_at timestamp, run_id varchar)"
    )


@dataclass(frozen=True)
class SnapshotEntry:
    row_hash: str
    destination_id: str | None
    committed_at: dt.datetime


def advance_snapshot(
    warehouse: Warehouse,
    tables: SnapshotTables,
    run_id: str,
    puts: Sequence[tuple[str, str, str | None]],
    deletes: Iterable[str],
    now: dt.datetime,
) -> None:
    """Record ``puts`` (key, row_hash, destination_id) and forget ``deletes``, in one transaction.

    A put without a destination id keeps the one the snapshot already had.
    """
    rows: list[tuple[str, str | None, str | None, str]] = [(k, h, d, "put") for k, h, d in puts]
    rows += [(key, None, None, "delete") for key in deletes]
    if not rows:
        return
    ensure_snapshot(warehouse, tables)
    warehouse.execute(
        f"create or replace table {tables.staging} "
        "(key varchar, row_hash varchar, destination_id varchar, op varchar)"
    )
    warehouse.load_rows(tables.staging, ("key", "row_hash", "destination_id", "op"), rows)
    stamp = now.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    warehouse.execute("begin")
    try:
        warehouse.execute(
            f"update {tables.staging} as c set destination_id = s.destination_id from {tables.snapshot} s "
            "where c.key = s.key and c.destination_id is null"
        )
        warehouse.execute(f"delete from {tables.snapshot} where key in (select key from {tables.staging})")
        warehouse.execute(
            f"insert into {tables.snapshot} (key, row_hash, destination_id, committed_at, run_id) "
            f"select key, row_hash, destination_id, cast(? as timestamp), ? from {tables.staging} "
            "where op = 'put'",
            [stamp, run_id],
        )
        warehouse.execute("commit")
    except Exception:
        warehouse.execute("rollback")
        raise
    warehouse.execute(f"drop table if exists {tables.staging}")


def read_snapshot(
    warehouse: Warehouse, tables: SnapshotTables, keys: Sequence[str]
) -> dict[str, SnapshotEntry]:
    """Return the snapshot entries of ``keys`` (those it has)."""
    if not keys:
        return {}
    ensure_snapshot(warehouse, tables)
    found: dict[str, SnapshotEntry] = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        marks = ", ".join("?" for _ in chunk)
        for key, row_hash, destination_id, committed_at in warehouse.fetch_all(
            f"select key, row_hash, destination_id, committed_at from {tables.snapshot} where key in ({marks})",
            chunk,
        ):
            found[key] = SnapshotEntry(row_hash, destination_id, committed_at)
    return found


def snapshot_size(warehouse: Warehouse, tables: SnapshotTables) -> int:
    """Return how many records the snapshot holds."""
    ensure_snapshot(warehouse, tables)
    return int(warehouse.fetch_all(f"select count(*) from {tables.snapshot}")[0][0])
