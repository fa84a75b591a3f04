"""The plan: the model diffed against the snapshot inside the warehouse, streamed out in batches.

The model is mapped in SQL (``mapping.py``) and joined to the snapshot in one statement that
keeps, in a scratch table, only the rows the run acts on (to write, invalid, gone from the model),
each with its key, the hash of its record, its normalised identifier and why it is invalid, if it
is. A second read of the model makes the JSON text of the rows to write only, so a run over ten
million rows with a few changed makes a few records' text, not ten million. Every check runs in
the warehouse, over the whole model, so memory does not grow with it:

- a null or repeated primary key makes its rows invalid;
- a value a transform cannot convert makes its row invalid, naming the field;
- two rows the destination would take for one record (one email, by case or white space) are
  one winner and losers: the row whose record holds the identifier already wins, else the lowest
  key; the others are invalid, every run, until the conflict is gone.

Only changed rows leave the warehouse, and only their mapped fields. Changes come in two phases:
a record that takes an identifier another record of this sync still holds is written in phase 2,
after phase 1 wrote (or emptied) the identifiers that move away, so a new email or a swap of two
never meets its own previous owner.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from syncback.batches import BatchRef, BatchStore, batch_key, change_from_json, change_line, dumps, plan_key
from syncback.checks import CheckResult, evaluate
from syncback.destinations.base import Change
from syncback.destinations.registry import (
    destination_target,
    hashed_fields,
    identifier_fields,
    kind_of,
    removal_of,
)
from syncback.errors import GuardError, ModelError
from syncback.history import ensure_history, log_invalid
from syncback.mapping import MappingQuery, describe, model_problems
from syncback.snapshot import SNAPSHOT_COLUMNS, SnapshotTables, ensure_snapshot, same_target, swap_in
from syncback.spec import SyncSpec
from syncback.warehouses.base import Warehouse
from syncback.warehouses.dialect import literal

SAMPLE_SIZE = 20
PHASES = (1, 2)


@dataclass
class PlanCounts:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    invalid: int = 0

    @property
    def changes(self) -> int:
        """How many records the run must account for: added + changed + removed."""
        return self.added + self.changed + self.removed


@dataclass
class InvalidRow:
    key: str | None
    reason: str


@dataclass
class PlanResult:
    """What a plan found, and where its batches are."""

    sync: str
    run_id: str
    counts: PlanCounts
    snapshot_size: int
    full_resync: bool
    version: int = 0
    target: str = ""
    deferred: int = 0  # changes left for the next run (max_changes_per_run)
    trigger: str = ""  # what started the run (RunRecord.trigger)
    checks: list[dict[str, Any]] = field(default_factory=list)  # the data checks' results (CheckResult)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    batches: list[BatchRef] = field(default_factory=list)
    invalid_sample: list[InvalidRow] = field(default_factory=list)
    change_sample: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanResult:
        return cls(
            sync=data["sync"],
            run_id=data["run_id"],
            counts=PlanCounts(**data["counts"]),
            snapshot_size=data["snapshot_size"],
            full_resync=data["full_resync"],
            version=data.get("version", 0),
            target=data.get("target", ""),
            deferred=data.get("deferred", 0),
            trigger=data.get("trigger", ""),
            checks=data.get("checks", []),
            started_at=data["started_at"],
            batches=[BatchRef(**b) for b in data["batches"]],
            invalid_sample=[InvalidRow(**r) for r in data["invalid_sample"]],
            change_sample=data.get("change_sample", []),
        )

    def batches_of(self, phase: int) -> list[BatchRef]:
        return [b for b in self.batches if b.phase == phase]


def new_version(clock: float | None = None) -> int:
    """Return a version for a plan made now: microseconds since the epoch."""
    return int((time.time() if clock is None else clock) * 1_000_000)


class Planner:
    """Plans one run of one sync against one warehouse."""

    def __init__(
        self,
        sync: SyncSpec,
        warehouse: Warehouse,
        state_schema: str,
        models: Warehouse | None = None,
        stage_schema: str = "",
    ) -> None:
        """``warehouse`` reaches the state schema; ``models``, where given, is the connection with
        the credentials that read models (the state schema's are apart): the model's rows a plan
        reads are handed over through a table in ``stage_schema``, and no SQL of the model ever runs
        with the state schema's credentials."""
        self.sync = sync
        self.warehouse = warehouse
        self.models = models
        self.stage_schema = stage_schema
        self.model_sql = sync.model_sql  # what the plan's SQL reads the model as
        self.tables = SnapshotTables(state_schema, sync.name)
        self.identifiers = identifier_fields(sync)
        self.target = destination_target(sync)
        # a release's record: the identifier given up, or, where the identifier is the record
        # (which keeps it), every mapped field emptied, so the row is held by one record only
        released = self.identifiers if kind_of(sync).releases else sorted(sync.mapping)
        self._emptied = {name: None for name in released}
        self._columns: list[tuple[str, str]] = []  # the model's, as the warehouse describes them

    def plan(
        self,
        run_id: str,
        store: BatchStore | None,
        full_resync: bool = False,
        sample_changes: int = 0,
        started_at: str | None = None,
        trigger: str = "",
    ) -> PlanResult:
        """Diff the model against the snapshot; write batches to ``store`` (None: a dry run, which
        also logs nothing)."""
        if self.models is None:
            return self._plan(run_id, store, full_resync, sample_changes, started_at, trigger)
        handed = self._hand_over(run_id)
        try:
            return self._plan(run_id, store, full_resync, sample_changes, started_at, trigger)
        finally:
            self.models.execute(f"drop table if exists {handed}")

    def _hand_over(self, run_id: str) -> str:
        """Copy the model's rows, only the columns the plan reads (key, mapped, checked), into a
        table of the stage schema, with the models' credentials; the plan reads that table."""
        assert self.models is not None
        described = self.models.columns(self.sync.model_sql)
        wanted = {
            self.sync.primary_key,
            *self.sync.columns,
            *(c.column for c in self.sync.checks if c.column),
        }
        wanted = {name.lower() for name in wanted}
        # a column the model lacks is left out here and named by the mapping's check, as without a hand-over
        keep = [name for name, _ in described if name.lower() in wanted] or [described[0][0]]
        table = f"{self.stage_schema}.model__{self.sync.name}__{re.sub(r'[^A-Za-z0-9]', '_', run_id)}"
        columns = ", ".join(self.models.dialect.quote(name) for name in keep)
        self.models.execute(
            f"create or replace transient table {table} as select {columns} from (\n{self.sync.model_sql}\n) as m"
        )
        self.model_sql = f"select * from {table}"
        return table

    def _plan(
        self,
        run_id: str,
        store: BatchStore | None,
        full_resync: bool,
        sample_changes: int,
        started_at: str | None,
        trigger: str,
    ) -> PlanResult:
        query = self._mapping_query()
        checked = self._check_data(store is not None)
        ensure_snapshot(self.warehouse, self.tables)
        table, writes = self.tables.scratch("plan"), self.tables.scratch("writes")
        try:
            self.warehouse.create_scratch_as(table, self._plan_sql(query, full_resync))
            result = self._count(table, run_id, full_resync)
            result.started_at = started_at or result.started_at
            result.trigger = trigger
            result.checks = [c.to_json() for c in checked]
            if store is not None:
                log_invalid(self.warehouse, self.tables, table, run_id, dt.datetime.now(dt.UTC))
            self._check_guards(result)
            source, ordered = self._writes_source(table, writes, query, result)
            self._write_batches(table, source, ordered, result, store, sample_changes)
            if store is not None:
                self._rehash(table)
        finally:
            self.warehouse.execute(f"drop table if exists {writes}")
            self.warehouse.execute(f"drop table if exists {table}")
        if store is not None:
            store.put_json(plan_key(self.sync.name, run_id), result.to_json())
        # a plan of millions of rows leaves the warehouse's cache full: the deliveries need the memory
        self.warehouse.release_memory()
        return result

    # ---- the plan table ---------------------------------------------------------------------

    def _mapping_query(self) -> MappingQuery:
        """Return the mapping as SQL over the model; raise ModelError naming what the model lacks."""
        self._columns = self.warehouse.columns(self.model_sql)
        described = describe(self._columns, self.warehouse.dialect)
        problems = model_problems(self.sync, described)
        if problems:
            raise ModelError("; ".join(str(p) for p in problems))
        return MappingQuery(
            self.sync, described, self.warehouse.dialect, self.identifiers, hashed_fields(self.sync)
        )

    def _check_data(self, stop: bool) -> list[CheckResult]:
        """Evaluate the sync's data checks over the model; when ``stop`` (a run, not a dry run), a
        failing check of severity error stops the plan before anything is sent (GuardError)."""
        if not self.sync.checks:
            return []
        ensure_history(self.warehouse, self.tables)
        last = self.warehouse.fetch_all(
            f"select added + changed + unchanged + invalid from {self.tables.runs} "
            "where sync = ? and status in ('succeeded', 'partial') and \"trigger\" <> 'replay' "
            "order by started_at desc limit 1",
            [self.sync.name],
        )
        results = evaluate(
            self.warehouse,
            self.model_sql,
            [name for name, _ in self._columns],
            self.sync.checks,
            int(last[0][0]) if last else None,
            dt.datetime.now(dt.UTC),
            f"syncs/{self.sync.name}.yaml",
        )
        failed = [r for r in results if not r.passed and r.severity == "error"]
        if stop and failed:
            raise GuardError(
                "data checks failed, nothing was sent: "
                + "; ".join(f"{r.check} ({r.detail})" for r in failed)
                + ". Fix the model, or the check in the spec"
            )
        return results

    def _plan_sql(self, query: MappingQuery, full_resync: bool = False) -> str:
        """Return the query of the plan table: every model row, mapped, checked, beside its snapshot
        row; only the rows the run acts on are kept, and only their keys, hashes and identifiers."""
        pk = self.sync.primary_key
        legacy = None if full_resync else self._legacy_hash(query)

        def eligible(incumbent: str, row: str, n: str = "sb_n") -> str:
            # who may hold an identifier: rows with a key of their own, valid or holding it already
            return (
                f"({row}sb_key is not null and {n} = 1 and coalesce({row}sb_ident, '') <> '' "
                f"and ({row}sb_invalid is null or {incumbent}))"
            )

        ident = "s.identity" if self.identifiers else "cast(null as varchar)"
        incumbent = f"coalesce({ident} = y.sb_ident and not s.removed, false)"
        if self.identifiers:
            window = (
                f"partition by {eligible(incumbent, 'y.', 'coalesce(d.sb_n, 1)')}, y.sb_ident "
                f"order by case when {incumbent} then 0 else 1 end, y.sb_key"
            )
            ranks = (
                f"row_number() over ({window}) as sb_rank, first_value(y.sb_key) over ({window}) as sb_winner"
            )
        else:  # nothing to compete for: no window to sort the whole model by
            ranks = "1 as sb_rank, cast(null as varchar) as sb_winner"
        names = ", ".join(self.identifiers)
        loser = literal(
            f"field {names} has the same value (as the destination compares it) as the row with key "
        )
        loser_tail = literal(", and the destination holds one record per value: only that row is sent")
        reason = (
            "case when sb_present is null then null "
            f"when sb_key is null then {literal(f'primary key {pk} is null (')} || sb_n || ' rows)' "
            "when sb_n > 1 then 'duplicate primary key (' || sb_n || ' rows share it)' "
            "when sb_invalid is not null then sb_invalid "
            f"when {eligible('sb_incumbent', '')} and sb_rank > 1 then {loser} || sb_winner || {loser_tail} end"
        )
        mapped = query.select(self.model_sql)
        # keys that more than one row has (few or none): counted apart and looked up after the join,
        # so the join carries no count for every row of the model
        repeated = f"select sb_key, count(*) as sb_n from ({mapped}) as k group by sb_key having count(*) > 1"
        # every model row beside its snapshot row, and every snapshot row of the target the model
        # no longer has (``sb_gone``): one full join decides added, changed, unchanged and removed.
        # Joining ten million rows is the plan's main cost, and every column the join carries spills
        # with it: it carries what the comparison reads, hashes compact (a number on DuckDB; after an
        # upgrade, the text older releases kept), and the rest is looked up for the rows kept
        ident_column = "m.sb_ident" if self.identifiers else "cast(null as varchar) as sb_ident"
        carried = "m.*" if legacy else f"m.sb_key, m.sb_invalid, {ident_column}"
        compact = legacy is None
        dialect = self.warehouse.dialect
        kept = dialect.compact_hash("row_hash") if compact else "row_hash"
        checked = (
            f"select y.*, coalesce(d.sb_n, 1) as sb_n, {incumbent} as sb_incumbent, "
            "y.sb_present is null and s.key is not null and not s.removed as sb_gone, s.key as s_key, "
            f"s.key is not null and not s.removed as sb_live, s.row_hash as s_hash, {ranks} "
            f"from (select {carried}, true as sb_present, {query.row_hash(self.target, compact)} as sb_hash "
            f"from ({mapped}) as m) as y "
            f"full join (select key, {kept} as row_hash, removed{', identity' if self.identifiers else ''} "
            f"from {self.tables.snapshot} s where {same_target('s', self.target)}) as s on s.key = y.sb_key "
            f"left join ({repeated}) as d on d.sb_key is not distinct from y.sb_key"
        )
        same = "s_hash = sb_hash"
        if legacy is not None:  # the values ride along, and a row's text is made only if needed
            same = (
                f"(case when {same} then true when length(s_hash) = 32 then s_hash = {legacy} else false end)"
            )
        unchanged = "false" if full_resync else f"coalesce(sb_live and {same}, false)"
        judged = (
            f"select x.*, {reason} as sb_reason, {unchanged} as sb_unchanged "
            f"from ({checked}) as x where x.sb_present or x.sb_gone"
        )
        # the table keeps what the run acts on: rows to write, invalid rows, rows that left, and
        # unchanged rows whose hash is rehashed; keys, hashes and identifiers, never values. Most
        # rows of most runs are unchanged, and storing them would cost more than the rest of the plan
        write = "sb_present and sb_reason is null and not sb_unchanged"
        rehash = "case when sb_unchanged and s_hash <> sb_hash then sb_hash end"
        if legacy is None:
            rehash = "cast(null as varchar)"
        return (
            f"select coalesce(j.sb_key, j.s_key) as sb_key, {write} as sb_write, j.sb_ident, "
            f"{dialect.kept_hash('j.sb_hash') if compact else 'j.sb_hash'} as sb_hash, "
            "s.destination_id as s_dest, s.identity as s_ident, j.sb_reason, "
            "coalesce(j.sb_live, false) as sb_live, j.sb_gone, s.created as s_created, "
            f"{rehash} as sb_rehash from (select * from ({judged}) as k "
            f"where sb_gone or not sb_unchanged or {rehash} is not null) as j "
            f"left join {self.tables.snapshot} s on s.key = j.s_key"
        )

    def _legacy_hash(self, query: MappingQuery) -> str | None:
        """Return SQL of the hash an older release kept, if the snapshot still holds such hashes."""
        legacy = self.warehouse.dialect.legacy_row_hash(self.target, query.record())
        if legacy is None or not self.warehouse.fetch_all(
            f"select 1 from {self.tables.snapshot} where length(row_hash) = 32 limit 1"
        ):
            return None
        return legacy

    def _rehash(self, table: str) -> None:
        """Give unchanged rows the hash this release keeps, so the next plan need not make their text.

        Once, after an upgrade: the snapshot is rewritten beside itself and swapped in one
        transaction (an UPDATE of millions of rows does not spill to disk, a rewrite does).
        """
        if not self.warehouse.fetch_all(f"select 1 from {table} where sb_rehash is not null limit 1"):
            return
        snap, fresh = self.tables.snapshot, self.tables.scratch("rehash")
        names = [column.split()[0] for column in SNAPSHOT_COLUMNS.split(", ")]
        columns = ", ".join(
            "coalesce(p.sb_rehash, s.row_hash) as row_hash" if n == "row_hash" else f"s.{n}" for n in names
        )
        self.warehouse.create_scratch_as(
            fresh,
            f"select {columns} from {snap} s left join (select sb_key, sb_rehash from {table} "
            f"where sb_rehash is not null) p on p.sb_key = s.key",
        )
        self.warehouse.execute("begin")
        try:
            swap_in(self.warehouse, self.tables, fresh)
            self.warehouse.execute("commit")
        except BaseException:
            self.warehouse.execute("rollback")
            self.warehouse.execute(f"drop table if exists {fresh}")
            raise

    # ---- counts, guards --------------------------------------------------------------------------

    def _count(self, table: str, run_id: str, full_resync: bool) -> PlanResult:
        snap = self.tables.snapshot
        live = f"not s.removed and {same_target('s', self.target)}"
        added, changed, invalid, removed = self.warehouse.fetch_all(
            "select coalesce(sum(case when sb_write and not sb_live then 1 else 0 end), 0), "
            "coalesce(sum(case when sb_write and sb_live then 1 else 0 end), 0), "
            "coalesce(sum(case when sb_reason is not null then 1 else 0 end), 0), "
            f"coalesce(sum(case when sb_gone then 1 else 0 end), 0) from {table}"
        )[0]
        # the unchanged rows are not in the table: they are the model's other rows
        rows = int(self.warehouse.fetch_all(f"select count(*) from (\n{self.model_sql}\n) as m")[0][0])
        unchanged = rows - int(added) - int(changed) - int(invalid)
        size, top = self.warehouse.fetch_all(
            f"select count(*), (select max(version) from {snap}) from {snap} s where {live}"
        )[0]
        counts = PlanCounts(int(added), int(changed), int(removed), int(unchanged), int(invalid))
        if full_resync:
            # everything is sent again; deletes wait for an ordinary run (as Hightouch does)
            counts.changed, counts.unchanged, counts.removed = counts.changed + counts.unchanged, 0, 0
        sample = [
            InvalidRow(None if key is None else str(key), str(why))
            for key, why in self.warehouse.fetch_all(
                f"select distinct sb_key, sb_reason from {table} where sb_reason is not null "
                f"order by sb_key nulls first limit {SAMPLE_SIZE}"
            )
        ]
        # a version above every one the snapshot holds, even if this machine's clock is behind
        version = max(new_version(), int(top or 0) + 1)
        return PlanResult(
            self.sync.name,
            run_id,
            counts,
            int(size),
            full_resync,
            version,
            self.target,
            invalid_sample=sample,
        )

    def _check_guards(self, result: PlanResult) -> None:
        counts = result.counts
        rows = counts.added + counts.changed + counts.unchanged + counts.invalid
        if rows == 0 and result.snapshot_size > 0:
            raise GuardError(
                f"sync {self.sync.name}: the model returned no rows while {result.snapshot_size} records are "
                "synced; an upstream job has probably failed, so nothing was sent, archived or forgotten. "
                "Check the model; when its rows come back, the next run sends only what changed"
            )
        if self.sync.mode != "mirror" or counts.removed == 0:
            return
        valid = counts.added + counts.changed + counts.unchanged
        if valid == 0:
            raise GuardError(
                f"sync {self.sync.name}: the model returned no valid rows, so mirror would delete all "
                f"{counts.removed} records it synced; stopped. If that is really wanted, archive them by hand"
            )
        limit = self.sync.guards.max_delete_pct
        assert limit is not None  # the spec requires it for mirror
        share = 100.0 * counts.removed / max(result.snapshot_size, 1)
        if share > limit:
            raise GuardError(
                f"sync {self.sync.name}: the plan deletes {counts.removed} of {result.snapshot_size} records "
                f"({share:.1f}%), above guards.max_delete_pct {limit}; stopped. "
                "Check the model; raise the guard in the spec if the deletes are right"
            )

    # ---- the changes ------------------------------------------------------------------------------

    def _changes(
        self, table: str, writes: str, ordered: bool, result: PlanResult
    ) -> Iterator[tuple[int, bool, list[str]]]:
        """Yield (phase, counted, changes as JSON text) for every change, phase by phase, in chunks;
        ``counted``: the chunk's changes count towards ``max_changes_per_run`` (releases do not).

        The writes, which are most changes, come out of the warehouse as finished JSON text: Python
        only joins them into batch files, so a plan's time is the warehouse's.
        """
        yield from self._writes(writes, 1, ordered)
        for chunk in self.warehouse.stream(self._releases_sql(table, writes, result)):
            # give the identifier (or the record) up in phase 1, so the row taking it in phase 2
            # meets no owner
            yield (
                1,
                False,
                [change_line(Change(key, "release", None, dict(self._emptied), dest)) for key, dest in chunk],
            )
        if not result.full_resync:
            yield from self._removals(table)
        yield from self._writes(writes, 2, ordered)

    def _releases_sql(self, table: str, writes: str, result: PlanResult) -> str:
        """Return the query of the records to give their identifier up in phase 1: those whose row
        moves (``sb_release``) and, where every move releases (``moves_by_release``), those whose
        row is not written this run (invalid: its identifier emptied, or lost to another row) while
        another row takes their identifier: else the taker's record meets their removal later, when
        their row moves on (an audience removes every member sharing an identifier)."""
        sql = f"select sb_key, s_dest from {writes} where sb_release"
        if (
            kind_of(self.sync).moves_by_release
            and self.identifiers
            and self.sync.mode != "insert"
            and result.snapshot_size
        ):
            sql += (
                f" union all select p.sb_key, p.s_dest from {table} p where not p.sb_write "
                "and p.sb_live and not p.sb_gone and p.s_dest is not null and p.s_ident is not null "
                f"and p.s_ident in (select w.sb_ident from {table} w where w.sb_write and w.sb_key <> p.sb_key)"
            )
        return sql + " order by sb_key"

    def _writes_source(
        self, table: str, writes: str, query: MappingQuery, result: PlanResult
    ) -> tuple[str, bool]:
        """Return what to read the rows to write from, made the way that costs least for this plan,
        and whether to read them in key order: the scratch table ``writes``, in order, or, for a
        first sync, the query itself, read once as it comes (sorting ten million finished lines
        would cost a third of the plan, and which rows share a batch does not matter)."""
        fresh = result.snapshot_size == 0 and not self.warehouse.fetch_all(
            f"select 1 from {table} where sb_write and (s_dest is not null or s_ident is not null) limit 1"
        )
        if fresh:
            return f"({self._fresh_writes_sql(table, query)}) as w", False
        # a few rows to write: the model's other rows are dropped as they are read; most of them:
        # filtering by key would cost more than it saves
        counts = result.counts
        few = 2 * (counts.added + counts.changed) < counts.changes + counts.unchanged
        self.warehouse.create_scratch_as(writes, self._writes_sql(table, query, few))
        return writes, True

    def _writes_sql(self, table: str, query: MappingQuery, few: bool = True) -> str:
        """Return the query of the rows to write, each with its phase, whether it releases first, and
        its change as the JSON array a batch stores (``change_to_json``).

        The records are made here, from a second read of the model joined to the rows to write, so
        the plan table never carries every row's values. A row is written only if its values still
        hash as the plan judged them: one that changed in between (a model that is not a stable
        table) is left undelivered, and the next run plans it afresh.
        """
        snap = self.tables.snapshot
        dest = "p.s_dest"
        if self.identifiers and self.sync.mode != "insert":
            live = f"not s.removed and s.identity is not null and {same_target('s', self.target)}"
            # wait: another record of this sync holds the identifier, and gives it up in phase 1
            wait = "(h.identity is not null and (h.k1 <> p.sb_key or h.k2 <> p.sb_key))"
            # release: another row takes this record's identifier while this record waits for its own
            wanted = "(w.sb_ident is not null and (w.k1 <> p.sb_key or w.k2 <> p.sb_key))"
            moves = f"coalesce(p.s_dest is not null and p.sb_live and p.s_ident <> p.sb_ident and {wanted}, false)"
            joins = (
                f"left join (select identity, min(key) as k1, max(key) as k2 from {snap} s where {live} "
                "group by identity) h on h.identity = p.sb_ident "
                f"left join (select sb_ident, min(sb_key) as k1, max(sb_key) as k2 from {table} "
                "where sb_write group by sb_ident) w on w.sb_ident = p.s_ident "
            )
            # a record whose identifier another row takes gives it up first (phase 1), however its
            # own move goes: a move the destination refuses must not keep the other row from it
            phase, release = f"case when {wait} or {moves} then 2 else 1 end", moves
            if kind_of(self.sync).moves_by_release:
                # every move releases its old identifier first: nothing written in phase 1 can then
                # take an identifier that a removal or release of phase 1 takes away. A row back in
                # the model whose member stayed when it left (upsert) moves too, unless another
                # record holds its old identifier now or another row takes it
                back = f"not p.sb_live and o.identity is null and not {wanted}"
                moved = f"coalesce(p.s_dest is not null and p.s_ident <> p.sb_ident and (p.sb_live or {back}), false)"
                # (looked up for the identifiers of rows coming back only: few, where the snapshot has millions)
                back_idents = f"select s_ident from {table} where sb_write and not sb_live"
                joins += (
                    f"left join (select distinct identity from {snap} s where {live} "
                    f"and identity in ({back_idents})) o on o.identity = p.s_ident "
                )
                phase, release = f"case when {wait} or {moved} then 2 else 1 end", moved
            elif not kind_of(self.sync).releases:
                # the identifier cannot be emptied (it is the record: an audience member is its
                # e-mail address). A record this sync created moves itself, in phase 1 (refused
                # while its new identifier is still held). One it did not create keeps its address
                # (its owner's, with its consent): it is released (its mapped fields emptied) in
                # phase 1, and the row is written by its new identifier in phase 2. Two rows
                # trading identifiers cannot move (each address is held while the other moves):
                # they trade records instead, each written by its new identifier in phase 2 into
                # the record that holds it. A row without a record of its own (or whose record
                # was released: it kept no identifier), written by identifier, waits for phase 2
                # if another record of this sync holds the identifier, so that it never writes
                # into one about to move away. A record moving to the identifier of a record whose
                # row left (archived in phase 1) moves in phase 2; if another row takes its own
                # identifier, it is not moved (that row is written into it) and is written by its
                # new identifier instead
                moving = "p.s_dest is not null and p.sb_live and p.s_ident <> p.sb_ident"
                release = f"coalesce({moving} and not coalesce(p.s_created, false), false)"
                trade = (
                    f"coalesce({moving} and h.k1 = h.k2 and w.k1 = w.k2 and h.k1 = w.k1 "
                    "and h.k1 <> p.sb_key, false)"
                )
                after_left = f"coalesce({moving} and h.k1 = h.k2 and g.sb_key is not null, false)"
                handed = f"({after_left} and {wanted})"
                joins += f"left join (select sb_key from {table} where sb_gone) g on g.sb_key = h.k1 "
                dest = f"case when {release} or {trade} or {handed} or p.s_ident is null then null else p.s_dest end"
                phase = (
                    f"case when ({wait} and ({dest}) is null) or {release} or {trade} or {after_left} "
                    "then 2 else 1 end"
                )
        else:
            joins, phase, release = "", "1", "false"
        action = "'\"upsert\"'"
        if self.sync.mode == "insert":  # a record that exists: insert mode never writes it again
            action = "case when coalesce(p.sb_live, false) or p.s_dest is not null then '\"keep\"' else '\"upsert\"' end"
        line = self._line_sql(query, "p.sb_key", action, "p.sb_hash", dest, "p.sb_ident")
        # the text is made after the join, for the rows to write only
        values = (
            f"select *, {query.row_hash(self.target)} as sb_hash from "
            f"({query.select(self.model_sql, f'select sb_key from {table} where sb_write' if few else None)}) as v"
        )
        return (
            f"select p.sb_key, p.sb_live, p.s_dest, {line} as sb_line, {phase} as sb_phase, "
            f"{release} as sb_release from {table} p join ({values}) as m "
            f"on m.sb_key = p.sb_key and m.sb_hash = p.sb_hash {joins}where p.sb_write"
        )

    def _fresh_writes_sql(self, table: str, query: MappingQuery) -> str:
        """Return ``_writes_sql`` for a plan whose rows to write the snapshot knows nothing of (a
        first sync): every valid model row is written, in phase 1, as it is read. Only the plan's
        invalid rows (few) are held to drop, not every row to write."""
        values = (
            f"select *, {query.row_hash(self.target)} as sb_hash from ({query.select(self.model_sql)}) as v"
        )
        line = self._line_sql(query, "m.sb_key", "'\"upsert\"'", "m.sb_hash", "null", "m.sb_ident")
        return (
            f"select m.sb_key, false as sb_live, cast(null as varchar) as s_dest, {line} as sb_line, "
            f"1 as sb_phase, false as sb_release from ({values}) as m "
            f"left join (select sb_key from {table} where sb_reason is not null) as x on x.sb_key = m.sb_key "
            "where m.sb_key is not null and x.sb_key is null"
        )

    def _line_sql(
        self, query: MappingQuery, key: str, action: str, row_hash: str, dest: str, ident: str
    ) -> str:
        """Return SQL of a change as the JSON array a batch stores (``change_to_json``)."""
        j = self.warehouse.dialect.json_scalar
        return (
            f"'[' || {j(key)} || ',' || {action} || ',\"' || {row_hash} || '\",' || "
            f"coalesce({j(dest)}, 'null') || ',' || {query.record()} || ',' || coalesce({j(ident)}, 'null') || ']'"
        )

    def _writes(self, writes: str, phase: int, ordered: bool) -> Iterator[tuple[int, bool, list[str]]]:
        order = " order by sb_key" if ordered else ""
        sql = f"select sb_line from {writes} where sb_phase = {phase}{order}"
        for chunk in self.warehouse.stream(sql, self.sync.batch_size):
            yield phase, True, [line for (line,) in chunk]

    def _sample(self, table: str, writes: str, size: int) -> list[dict[str, Any]]:
        """Return the first ``size`` writes and removals, as ``plan`` shows them."""
        kinds = [
            ("changed" if live else "added", line)
            for live, line in self.warehouse.fetch_all(
                f"select sb_live, sb_line from {writes} order by sb_phase, sb_key limit {size}"
            )
        ]
        for _, _, lines in itertools.islice(self._removals(table), 1):
            kinds += [("removed", line) for line in lines[: size - len(kinds)]]
        sample = []
        for kind, line in kinds:
            change = change_from_json(json.loads(line))
            sample.append({"kind": kind, "key": change.key, "action": change.action, "record": change.record})
        return sample

    def _removals(self, table: str) -> Iterator[tuple[int, bool, list[str]]]:
        sql = f"select sb_key, s_dest, s_created from {table} where sb_gone order by sb_key"
        clearable = [name for name in sorted(self.sync.mapping) if name not in self.identifiers]
        for chunk in self.warehouse.stream(sql):
            yield (
                1,
                True,
                [change_line(self._removal(k, dest, bool(created), clearable)) for k, dest, created in chunk],
            )

    def _removal(self, key: str, destination_id: str | None, created: bool, clearable: list[str]) -> Change:
        """Return what becomes of a record whose row left the model."""
        if self.sync.mode != "mirror":
            return Change(key, "forget", destination_id=destination_id)
        removal = removal_of(self.sync)
        if (created and removal == "archive") or (removal == "delete" and destination_id is not None):
            return Change(key, "archive", destination_id=destination_id)
        if (
            removal == "clear" or self.sync.remove_not_created == "clear_fields"
        ) and destination_id is not None:
            return Change(key, "clear", None, {name: None for name in clearable}, destination_id)
        return Change(key, "forget", destination_id=destination_id)

    def _write_batches(
        self,
        table: str,
        writes: str,
        ordered: bool,
        result: PlanResult,
        store: BatchStore | None,
        sample_changes: int,
    ) -> None:
        pending: list[str] = []
        current = 1

        def flush() -> None:
            key = batch_key(self.sync.name, result.run_id, len(result.batches))
            if store is not None:
                head = {
                    "sync": self.sync.name,
                    "run_id": result.run_id,
                    "version": result.version,
                    "phase": current,
                }
                text = dumps(head)[:-1] + b',"changes":[' + ",".join(pending).encode() + b"]}"
                store.put_bytes(key, text)
            result.batches.append(BatchRef(key, len(pending), current))
            pending.clear()

        cap = self.sync.max_changes_per_run
        emitted = 0
        for phase, counted, lines in self._changes(table, writes, ordered, result):
            room = None if cap is None else max(cap - emitted, 0)
            # the rest, in the same order, is what the next run plans first
            stop = room is not None and (room == 0 or (counted and len(lines) > room))
            if stop:
                lines = lines[:room] if counted else []
            emitted += len(lines) if counted else 0
            if phase != current:
                if pending:
                    flush()
                current = phase
            while lines:
                space = self.sync.batch_size - len(pending)
                pending.extend(lines[:space])
                lines = lines[space:]
                if len(pending) >= self.sync.batch_size:
                    flush()
            if stop:
                result.deferred = result.counts.changes - emitted
                break
        if pending:
            flush()
        if sample_changes:
            result.change_sample = self._sample(table, writes, sample_changes)
