"""The Warehouse protocol: the few things the planner and the commit need from a warehouse.

Every implementation runs plain SQL that DuckDB and Snowflake both accept, streams results in
chunks (a model of millions of rows never sits in memory at once) and maps its driver's errors
onto ``ModelError`` (the SQL is wrong) or ``WarehouseUnavailable`` (try again).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from syncback.warehouses.dialect import Dialect


class Warehouse(Protocol):
    """A connection to one warehouse."""

    #: how the SQL syncback generates is spelled here
    dialect: Dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement that returns nothing we need."""
        ...

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query whose result is small (counts, samples) and return every row."""
        ...

    def stream(self, sql: str, chunk_size: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        """Run a query and yield its rows in chunks of at most ``chunk_size``."""
        ...

    def columns(self, sql: str) -> list[tuple[str, str]]:
        """Return the (name, type) of each column the query would produce, without running it in full."""
        ...

    def create_scratch(self, table: str, columns: str) -> None:
        """Create a table for one plan, commit or replay (temporary where the warehouse has them)."""
        ...

    def create_scratch_as(self, table: str, query: str) -> None:
        """Create such a table from the rows of ``query``."""
        ...

    def stage_outcomes(self, table: str, receipt: bytes, seq: int, version: int, batch: int) -> None:
        """Insert a receipt's outcomes (``[key, status, destination_id, reason, created, action,
        row_hash, identity]`` each) into ``table`` (``snapshot.OUTCOME_COLUMNS``), parsing the JSON in
        the warehouse: no row passes through Python."""
        ...

    def stage_outcome_files(self, table: str, receipts: Sequence[tuple[Path, int, int, int]]) -> None:
        """``stage_outcomes`` for receipts kept as local files, each with its seq, version and batch
        (a local run's): all at once where the warehouse reads files itself."""
        ...

    def stage_unsent_files(
        self, table: str, batches: Sequence[tuple[Path, int, int, int]], reason: str
    ) -> None:
        """Stage every change of batch files kept locally (each with its seq, version and batch) as
        ``undelivered`` with ``reason``: the batches a run never sent."""
        ...

    def load_rows(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert many rows into an existing table quickly."""
        ...

    def release_memory(self) -> None:
        """Hand back what the connection keeps cached between statements, for what the process
        does next (a local run delivers between its plan and its commit)."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...
