"""The plan: the model diffed against the snapshot inside the warehouse, streamed out in batches.

The model is mapped in SQL (``mapping.py``) into a scratch table with, per row, its key, its
record as JSON text, an md5 of that text, the normalised identifier and why the row is invalid, if
it is. Every check runs there, over the whole model, so memory does not grow with it:

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
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from syncback.batches import BatchStore, batch_key, dumps, plan_key
from syncback.destinations.base import Change
from syncback.destinations.registry import destination_target, identifier_fields, kind_of
from syncback.errors import GuardError, ModelError
from syncback.mapping import MappingQuery, describe, model_problems
from syncback.snapshot import SnapshotTables, ensure_snapshot, same_target
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
class BatchRef:
    key: str
    count: int
    phase: int = 1


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

    def __init__(self, sync: SyncSpec, warehouse: Warehouse, state_schema: str) -> None:
        self.sync = sync
        self.warehouse = warehouse
        self.tables = SnapshotTables(state_schema, sync.name)
        self.identifiers = identifier_fields(sync)
        self.target = destination_target(sync)

    def plan(
        self,
        run_id: str,
        store: BatchStore | None,
        full_resync: bool = False,
        sample_changes: int = 0,
        started_at: str | None = None,
    ) -> PlanResult:
        """Diff the model against the snapshot; write batches to ``store`` (None: a dry run)."""
        query = self._mapping_query()
        ensure_snapshot(self.warehouse, self.tables)
        table = self.tables.scratch("plan")
        self.warehouse.create_scratch_as(table, self._plan_sql(query, full_resync))
        try:
            result = self._count(table, run_id, full_resync)
            result.started_at = started_at or result.started_at
            self._check_guards(result)
            self._write_batches(table, result, store, sample_changes)
        finally:
            self.warehouse.execute(f"drop table if exists {table}")
        if store is not None:
            store.put_json(plan_key(self.sync.name, run_id), result.to_json())
        return result

    # ---- the plan table ---------------------------------------------------------------------

    def _mapping_query(self) -> MappingQuery:
        """Return the mapping as SQL over the model; raise ModelError naming what the model lacks."""
        described = describe(self.warehouse.columns(self.sync.model_sql), self.warehouse.dialect)
        problems = model_problems(self.sync, described)
        if problems:
            raise ModelError("; ".join(str(p) for p in problems))
        return MappingQuery(self.sync, described, self.warehouse.dialect, self.identifiers)

    def _plan_sql(self, query: MappingQuery, full_resync: bool = False) -> str:
        """Return the query of the plan table: every model row, mapped, checked, beside its snapshot row."""
        digest = self.warehouse.dialect.md5(f"{literal(self.target)} || sb_record")
        pk = self.sync.primary_key

        def eligible(incumbent: str, row: str) -> str:
            # who may hold an identifier: rows with a key of their own, valid or holding it already
            return (
                f"({row}sb_key is not null and {row}sb_n = 1 and coalesce({row}sb_ident, '') <> '' "
                f"and ({row}sb_invalid is null or {incumbent}))"
            )

        incumbent = "coalesce(s.identity = y.sb_ident and not s.removed, false)"
        window = (
            f"partition by {eligible(incumbent, 'y.')}, y.sb_ident "
            f"order by case when {incumbent} then 0 else 1 end, y.sb_key"
        )
        names = ", ".join(self.identifiers)
        loser = literal(
            f"field {names} has the same value (as the destination compares it) as the row with key "
        )
        loser_tail = literal(", and the destination holds one record per value: only that row is sent")
        reason = (
            f"case when sb_key is null then {literal(f'primary key {pk} is null (')} || sb_n || ' rows)' "
            "when sb_n > 1 then 'duplicate primary key (' || sb_n || ' rows share it)' "
            "when sb_invalid is not null then sb_invalid "
            f"when {eligible('sb_incumbent', '')} and sb_rank > 1 then {loser} || sb_winner || {loser_tail} end"
        )
        checked = (
            f"select y.*, {incumbent} as sb_incumbent, "
            "s.key is not null and not s.removed as sb_live, s.row_hash as s_hash, "
            "s.destination_id as s_dest, s.identity as s_ident, s.created as s_created, "
            f"row_number() over ({window}) as sb_rank, first_value(y.sb_key) over ({window}) as sb_winner "
            f"from (select m.*, count(*) over (partition by m.sb_key) as sb_n, {digest} as sb_hash "
            f"from ({query.select(self.sync.model_sql)}) as m) as y "
            f"left join {self.tables.snapshot} s on s.key = y.sb_key and {same_target('s', self.target)}"
        )
        # only what is to be sent keeps its record, hash and identifiers: most rows of most runs are
        # unchanged, and writing their text would cost more than computing it
        unchanged = "false" if full_resync else "coalesce(sb_live and s_hash = sb_hash, false)"
        kept = f"({reason}) is null and not {unchanged}"
        keep = [
            f"case when {kept} then {c} end as {c}"
            for c in ("sb_record", "sb_ident", "sb_hash", "s_dest", "s_ident")
        ]
        return (
            f"select sb_key, {', '.join(keep)}, {reason} as sb_reason, sb_live, {unchanged} as sb_unchanged, "
            f"s_created from ({checked}) as x"
        )

    # ---- counts, guards --------------------------------------------------------------------------

    def _count(self, table: str, run_id: str, full_resync: bool) -> PlanResult:
        snap = self.tables.snapshot
        live = f"not s.removed and {same_target('s', self.target)}"
        differs = "not p.sb_unchanged"
        added, changed, unchanged, invalid = self.warehouse.fetch_all(
            "select coalesce(sum(case when p.sb_reason is null and not coalesce(p.sb_live, false) then 1 else 0 end), 0), "
            f"coalesce(sum(case when p.sb_reason is null and p.sb_live and ({differs}) then 1 else 0 end), 0), "
            f"coalesce(sum(case when p.sb_reason is null and p.sb_live and not ({differs}) then 1 else 0 end), 0), "
            "coalesce(sum(case when p.sb_reason is not null then 1 else 0 end), 0) "
            f"from {table} p"
        )[0]
        removed, size, top = self.warehouse.fetch_all(
            f"select coalesce(sum(case when not exists (select 1 from {table} p where p.sb_key = s.key) "
            "then 1 else 0 end), 0), count(*), "
            f"(select max(version) from {snap}) from {snap} s where {live}"
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

    def _changes(self, table: str, result: PlanResult) -> Iterator[tuple[str, int, str]]:
        """Yield (kind, phase, change as JSON text) for every change, phase by phase, in chunks.

        The writes, which are most changes, come out of the warehouse as finished JSON text: Python
        only joins them into batch files, so a plan's time is the warehouse's.
        """
        writes = self._writes_sql(table, result.full_resync)
        yield from self._writes(f"select sb_key, sb_live, sb_line from ({writes}) as c where sb_phase = 1", 1)
        for kind, phase, change in self._releases(
            f"select sb_key, s_dest from ({writes}) as c where sb_release"
        ):
            yield kind, phase, _line(change)
        if not result.full_resync:
            for kind, phase, change in self._removals(table):
                yield kind, phase, _line(change)
        yield from self._writes(f"select sb_key, sb_live, sb_line from ({writes}) as c where sb_phase = 2", 2)

    def _writes_sql(self, table: str, full_resync: bool) -> str:
        """Return the query of the rows to write, each with its phase, whether it releases first, and
        its change as the JSON array a batch stores (``change_to_json``)."""
        snap = self.tables.snapshot
        differs = "not p.sb_unchanged"
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
                "where sb_reason is null group by sb_ident) w on w.sb_ident = p.s_ident "
            )
            # a record whose identifier another row takes gives it up first (phase 1), however its
            # own move goes: a move the destination refuses must not keep the other row from it
            phase, release = f"case when {wait} or {moves} then 2 else 1 end", moves
        else:
            joins, phase, release = "", "1", "false"
        action = "'\"upsert\"'"
        if self.sync.mode == "insert":  # a record that exists: insert mode never writes it again
            action = "case when coalesce(p.sb_live, false) or p.s_dest is not null then '\"keep\"' else '\"upsert\"' end"
        j = self.warehouse.dialect.json_scalar
        line = (
            f"'[' || {j('p.sb_key')} || ',' || {action} || ',\"' || p.sb_hash || '\",' || "
            f"coalesce({j('p.s_dest')}, 'null') || ',' || p.sb_record || ',' || coalesce({j('p.sb_ident')}, 'null') || ']'"
        )
        return (
            f"select p.sb_key, coalesce(p.sb_live, false) as sb_live, p.s_dest, {line} as sb_line, "
            f"{phase} as sb_phase, {release} as sb_release from {table} p {joins}"
            f"where p.sb_reason is null{'' if full_resync else f' and ({differs})'}"
        )

    def _writes(self, sql: str, phase: int) -> Iterator[tuple[str, int, str]]:
        for chunk in self.warehouse.stream(f"{sql} order by sb_key"):
            for _, live, line in chunk:
                yield ("changed" if live else "added"), phase, line

    def _releases(self, sql: str) -> Iterator[tuple[str, int, Change]]:
        emptied = {name: None for name in self.identifiers}
        for chunk in self.warehouse.stream(f"{sql} order by sb_key"):
            for key, destination_id in chunk:
                # give the identifier up in phase 1, so the row taking it in phase 2 meets no owner
                yield "release", 1, Change(key, "release", None, dict(emptied), destination_id)

    def _removals(self, table: str) -> Iterator[tuple[str, int, Change]]:
        snap = self.tables.snapshot
        sql = (
            f"select s.key, s.destination_id, s.created from {snap} s where not s.removed "
            f"and {same_target('s', self.target)} "
            f"and not exists (select 1 from {table} p where p.sb_key = s.key) order by s.key"
        )
        clearable = [name for name in sorted(self.sync.mapping) if name not in self.identifiers]
        for chunk in self.warehouse.stream(sql):
            for key, destination_id, created in chunk:
                yield "removed", 1, self._removal(key, destination_id, bool(created), clearable)

    def _removal(self, key: str, destination_id: str | None, created: bool, clearable: list[str]) -> Change:
        """Return what becomes of a record whose row left the model."""
        if self.sync.mode != "mirror":
            return Change(key, "forget", destination_id=destination_id)
        removal = kind_of(self.sync).removal
        if created and removal == "archive":
            return Change(key, "archive", destination_id=destination_id)
        if (
            removal == "clear" or self.sync.remove_not_created == "clear_fields"
        ) and destination_id is not None:
            return Change(key, "clear", None, {name: None for name in clearable}, destination_id)
        return Change(key, "forget", destination_id=destination_id)

    def _write_batches(
        self, table: str, result: PlanResult, store: BatchStore | None, sample_changes: int
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
        for kind, phase, line in self._changes(table, result):
            if cap is not None and emitted >= cap:
                result.deferred = result.counts.changes - emitted
                break  # the rest, in the same order, is what the next run plans first
            emitted += kind != "release"
            if phase != current:
                if pending:
                    flush()
                current = phase
            if len(result.change_sample) < sample_changes and kind != "release":
                change = change_from_json(json.loads(line))
                result.change_sample.append(
                    {"kind": kind, "key": change.key, "action": change.action, "record": change.record}
                )
            pending.append(line)
            if len(pending) >= self.sync.batch_size:
                flush()
        if pending:
            flush()


def _line(change: Change) -> str:
    return json.dumps(change_to_json(change), separators=(",", ":"), ensure_ascii=False)


def change_to_json(change: Change) -> list[Any]:
    """Return a change as the compact array a batch stores."""
    return [change.key, change.action, change.row_hash, change.destination_id, change.record, change.identity]


def change_from_json(item: list[Any]) -> Change:
    key, action, row_hash, destination_id, record, *identity = item
    return Change(key, action, row_hash, record, destination_id, identity[0] if identity else None)
