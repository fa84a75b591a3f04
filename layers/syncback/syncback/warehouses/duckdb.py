"""DuckDB, the embedded default warehouse: one file beside the project."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from syncback.errors import ModelError, WarehouseUnavailable
from syncback.spec import DEFAULT_DUCKDB_MEMORY, MB_PER_READER, MB_PER_THREAD, megabytes
from syncback.warehouses.dialect import Dialect, DuckDBDialect

#: how long a run waits for a DuckDB file another process holds (one writer process at a time)
LOCK_WAIT_S = 30.0
_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID (\d+)\)")


def threads_for(memory_limit: str, cores: int | None = None, per_thread: int = MB_PER_THREAD) -> int:
    """Return how many threads DuckDB may use within ``memory_limit``: one per ``per_thread`` MB,
    at least one, at most one per core."""
    return max(1, min(cores or os.cpu_count() or 1, int(megabytes(memory_limit) // per_thread)))


class DuckDBWarehouse:
    """A connection to a DuckDB database file (or ``:memory:``)."""

    dialect: Dialect = DuckDBDialect()

    def __init__(
        self, path: Path | str, lock_wait_s: float = LOCK_WAIT_S, memory_limit: str = DEFAULT_DUCKDB_MEMORY
    ) -> None:
        self.path = str(path)
        self._con = self._connect(lock_wait_s)
        # memory stays flat in the model's size: beyond the limit DuckDB spills to <file>.tmp/
        self.memory_limit, self.threads = memory_limit, threads_for(memory_limit)
        self._run(f"set memory_limit = '{memory_limit}'", ())
        self._run(f"set threads = {self.threads}", ())
        self._run("set preserve_insertion_order = false", ())
        # what a timestamp with time zone reads as must not depend on the machine: UTC, always
        self._run("set TimeZone = 'UTC'", ())

    def _connect(self, lock_wait_s: float) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting up to ``lock_wait_s`` while another process holds it."""
        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                return duckdb.connect(self.path)
            except duckdb.IOException as exc:
                holder = _HOLDER.search(str(exc))
                if holder is None:
                    raise WarehouseUnavailable(f"cannot open DuckDB file {self.path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise WarehouseUnavailable(
                        f"the DuckDB file {self.path} is in use by another process ({holder.group(1)}, "
                        f"PID {holder.group(2)}); waited {lock_wait_s:g}s. Stop that process, or let it "
                        "finish, and run again. Nothing was sent"
                    ) from exc
                time.sleep(0.2)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(sql, params)

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(sql, params).fetchall()

    def stream(self, sql: str, chunk_size: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        cursor = self._con.cursor()
        try:
            cursor.execute(sql)
        except duckdb.Error as exc:
            raise _classify(exc) from exc
        while rows := cursor.fetchmany(chunk_size):
            yield rows
        cursor.close()

    def columns(self, sql: str) -> list[tuple[str, str]]:
        cursor = self._run(f"select * from (\n{sql}\n) as model limit 0", ())
        return [(d[0], str(d[1])) for d in cursor.description or []]

    def create_scratch(self, table: str, columns: str) -> None:
        self._run(f"create or replace table {table} ({columns})", ())

    def create_scratch_as(self, table: str, query: str) -> None:
        self._run(f"create or replace table {table} as {query}", ())

    def stage_outcomes(self, table: str, receipt: bytes, seq: int, version: int, batch: int) -> None:
        self._run(
            f"insert into {table} select o->>0, o->>1, o->>2, cast(o->>4 as boolean), o->>5, o->>6, o->>7, "
            "o->>3, ?, ?, ? from (select unnest(cast(json_extract(cast(? as json), '$.outcomes') as json[])) as o)",
            [seq, version, batch, receipt.decode("utf-8")],
        )

    def stage_outcome_files(self, table: str, receipts: Sequence[tuple[Path, int, int, int]]) -> None:
        if not receipts:
            return
        # one statement reads every file, on every thread: twice as fast as a receipt at a time
        self._read_files(
            table,
            receipts,
            "o->>0, o->>1, o->>2, cast(o->>4 as boolean), o->>5, o->>6, o->>7, o->>3",
            "outcomes",
        )

    def _read_files(
        self,
        table: str,
        files: Sequence[tuple[Path, int, int, int]],
        row: str,
        array: str,
        params: Sequence[Any] = (),
    ) -> None:
        """Insert into ``table`` one row (``row``, over ``o``/``c``: an item) per item of each JSON
        file's ``array``, then the file's seq, version and batch; every file in one statement."""
        paths = [str(path) for path, *_ in files]
        largest = max(path.stat().st_size for path, *_ in files)
        item = array[0]  # o (outcomes), c (changes)
        # each file's numbers are looked up by its name, one file at a time: a join would let DuckDB
        # hold every file's items in its hash table, and a large run's would not fit in memory
        at = "[list_position(?, filename)]"
        with self._reading_json():
            self._run(
                f"insert into {table} select {row}, seq, version, batch from (select unnest({array}) as {item}, "
                f"cast(? as integer[]){at} as seq, cast(? as bigint[]){at} as version, "
                f"cast(? as integer[]){at} as batch from read_json(?, columns={{'{array}': 'JSON[]'}}, "
                "filename=true, maximum_object_size=?))",
                [
                    *params,
                    [seq for _, seq, _, _ in files],
                    paths,
                    [version for _, _, version, _ in files],
                    paths,
                    [batch for _, _, _, batch in files],
                    paths,
                    paths,
                    largest + 1,
                ],
            )

    def stage_unsent_files(
        self, table: str, batches: Sequence[tuple[Path, int, int, int]], reason: str
    ) -> None:
        if not batches:
            return
        # a change is the array batches.change_to_json writes: key, action, hash, id, record, identity
        self._read_files(
            table,
            batches,
            "c->>0, 'undelivered', c->>3, cast(null as boolean), c->>1, c->>2, c->>5, ?",
            "changes",
            [reason],
        )

    def load_rows(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        # executemany is slow in DuckDB; a newline-delimited JSON file is read at full speed
        fd, path = tempfile.mkstemp(suffix=".jsonl")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                for row in rows:
                    out.write(json.dumps(dict(zip(columns, row, strict=True)), default=str))
                    out.write("\n")
            spec = ", ".join(f"'{c}': 'VARCHAR'" for c in columns)
            cols = ", ".join(columns)
            with self._reading_json():
                self._run(
                    f"insert into {table} ({cols}) select {cols} from "
                    f"read_json(?, format='newline_delimited', columns={{{spec}}})",
                    [path],
                )
        finally:
            os.unlink(path)

    @contextmanager
    def _reading_json(self) -> Iterator[None]:
        """Run what is within on the threads reading JSON may have: it takes more memory a thread
        (``MB_PER_READER``) than the other statements."""
        self._run(f"set threads = {threads_for(self.memory_limit, per_thread=MB_PER_READER)}", ())
        try:
            yield
        finally:
            self._run(f"set threads = {self.threads}", ())

    def release_memory(self) -> None:
        # DuckDB keeps the blocks it read cached up to its limit; a lower limit evicts them, and
        # their memory goes back to the system
        self._run("set memory_limit = '16MB'", ())
        self._run(f"set memory_limit = '{self.memory_limit}'", ())

    def close(self) -> None:
        self._con.close()

    def _run(self, sql: str, params: Sequence[Any]) -> duckdb.DuckDBPyConnection:
        try:
            return self._con.execute(sql, list(params))
        except duckdb.Error as exc:
            raise _classify(exc) from exc


def _classify(exc: duckdb.Error) -> Exception:
    if isinstance(exc, duckdb.IOException):
        return WarehouseUnavailable(f"DuckDB I/O error: {exc}")
    return ModelError(f"DuckDB: {exc}")
