"""The plan: the model diffed against the snapshot inside the warehouse, streamed out in batches.

The model is materialised once in the state schema with, per row, its key, how many rows share
that key, and a stable md5 of the mapped columns only (plus a fingerprint of the mapping, so a
changed mapping re-sends every record). Counts come from SQL; only changed rows leave the
warehouse, and only their mapped columns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from syncback.batches import BatchStore, batch_key, plan_key
from syncback.destinations.base import Action, Change
from syncback.errors import GuardError, ModelError, Problem
from syncback.mapping import InvalidValue, Mapper
from syncback.snapshot import SnapshotTables, ensure_snapshot
from syncback.spec import SyncSpec
from syncback.warehouses.base import Warehouse

SAMPLE_SIZE = 10


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


@dataclass
class PlanResult:
    """What a plan found, and where its batches are."""

    sync: str
    run_id: str
    counts: PlanCounts
    snapshot_size: int
    full_resync: bool
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
            started_at=data["started_at"],
            batches=[BatchRef(**b) for b in data["batches"]],
            invalid_sample=[InvalidRow(**r) for r in data["invalid_sample"]],
            change_sample=data.get("change_sample", []),
        )


def mapping_fingerprint(sync: SyncSpec, column_types: list[str]) -> str:
    """Return a digest of everything that shapes a record, so that changing it re-sends all.

    The mapped columns' types are part of it: a column whose type changes (an integer becoming
    text) may keep its text form but not its JSON form, so every row is sent again.
    """
    shape = {
        "types": column_types,
        "mapping": {k: v.model_dump(mode="json") for k, v in sync.mapping.items()},
        "destination": [
            sync.destination.type,
            getattr(sync.destination, "object", None),
            getattr(sync.destination, "id_property", None),
        ],
        "mode": sync.mode,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def required_fields(sync: SyncSpec) -> list[str]:
    """Return the fields that identify a record in the destination and so may not be empty."""
    id_property = getattr(sync.destination, "id_property", None)
    return [id_property] if id_property and sync.mode != "insert" else []


def model_problems(sync: SyncSpec, described: list[tuple[str, str]]) -> list[Problem]:
    """Return a problem for the primary key and each mapped column the model does not have."""
    have = sorted(name for name, _ in described)
    lower = {name.lower() for name in have}
    file = f"syncs/{sync.name}.yaml"
    problems = []
    if sync.primary_key.lower() not in lower:
        problems.append(
            Problem(
                file, "primary_key", f"the model has no column {sync.primary_key} (it has: {', '.join(have)})"
            )
        )
    for field_name, entry in sync.mapping.items():
        if entry.column is not None and entry.column.lower() not in lower:
            problems.append(
                Problem(
                    file,
                    f"mapping.{field_name}",
                    f"the model has no column {entry.column}; fix the name or add it to the model (it has: {', '.join(have)})",
                )
            )
    return problems


class IdentityCheck:
    """Refuses a second record with the same destination identifier (two customers, one email).

    The destination keeps one record per identifier, so sending both makes the last one win, and
    which is last is not up to us. The first is sent; the others are invalid, with the reason.
    It sees the changes of one plan (unchanged rows are not read), which covers every first run.
    """

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        self._seen: dict[tuple[str, str], str] = {}

    def check(self, key: str, record: dict[str, Any]) -> None:
        for name in self.fields:
            value = (name, str(record.get(name, "")).strip().lower())
            first = self._seen.setdefault(value, key)
            if first != key:
                raise InvalidValue(
                    f"field {name} has the same value as the record with key {first}; the destination "
                    "keeps one record per value, so only that one is sent"
                )


class Planner:
    """Plans one run of one sync against one warehouse."""

    def __init__(self, sync: SyncSpec, warehouse: Warehouse, state_schema: str) -> None:
        self.sync = sync
        self.warehouse = warehouse
        self.tables = SnapshotTables(state_schema, sync.name)

    def plan(
        self,
        run_id: str,
        store: BatchStore | None,
        full_resync: bool = False,
        sample_changes: int = 0,
        started_at: str | None = None,
    ) -> PlanResult:
        """Diff the model against the snapshot; write batches to ``store`` (None: a dry run)."""
        columns, types = self._check_columns()
        ensure_snapshot(self.warehouse, self.tables)
        self._materialise(columns, types)
        try:
            result = self._count(run_id, full_resync)
            result.started_at = started_at or result.started_at
            self._check_guards(result)
            self._write_batches(result, columns, store, sample_changes)
        finally:
            self.warehouse.execute(f"drop table if exists {self.tables.plan}")
        if store is not None:
            store.put_json(plan_key(self.sync.name, run_id), result.to_json())
        return result

    # ---- steps ---------------------------------------------------------------------------

    def _check_columns(self) -> tuple[list[str], list[str]]:
        """Return the mapped columns and their types; raise ModelError naming any the model lacks."""
        described = self.warehouse.columns(self.sync.model_sql)
        problems = model_problems(self.sync, described)
        if problems:
            raise ModelError("; ".join(str(p) for p in problems))
        types = {name.lower(): kind for name, kind in described}
        return self.sync.columns, [types[c.lower()] for c in self.sync.columns]

    def _materialise(self, columns: list[str], types: list[str]) -> None:
        pk = f"m.{self.sync.primary_key}"
        parts = [f"'{mapping_fingerprint(self.sync, types)}'"]
        for c in columns:
            text = f"cast(m.{c} as varchar)"
            parts.append(f"coalesce(cast(length({text}) as varchar) || ':' || {text}, '~')")
        digest = "md5(" + " || '|' || ".join(parts) + ")"
        mapped = "".join(f", m.{c} as sb_c{i}" for i, c in enumerate(columns))
        self.warehouse.execute(
            f"create or replace table {self.tables.plan} as select cast({pk} as varchar) as sb_key, "
            f"count(*) over (partition by {pk}) as sb_n, {digest} as sb_hash{mapped} "
            f"from ({self.sync.model_sql}) as m"
        )

    def _count(self, run_id: str, full_resync: bool) -> PlanResult:
        plan, snap = self.tables.plan, self.tables.snapshot
        added, changed, unchanged = self.warehouse.fetch_all(
            "select coalesce(sum(case when s.key is null then 1 else 0 end), 0), "
            "coalesce(sum(case when s.key is not null and s.row_hash <> p.sb_hash then 1 else 0 end), 0), "
            "coalesce(sum(case when s.key is not null and s.row_hash = p.sb_hash then 1 else 0 end), 0) "
            f"from {plan} p left join {snap} s on s.key = p.sb_key where p.sb_key is not null and p.sb_n = 1"
        )[0]
        null_keys = self.warehouse.fetch_all(f"select count(*) from {plan} where sb_key is null")[0][0]
        duplicates = self.warehouse.fetch_all(
            f"select sb_key, max(sb_n) from {plan} where sb_key is not null and sb_n > 1 "
            f"group by sb_key order by sb_key limit {SAMPLE_SIZE}"
        )
        duplicate_rows = self.warehouse.fetch_all(
            f"select count(*) from {plan} where sb_key is not null and sb_n > 1"
        )[0][0]
        removed = self.warehouse.fetch_all(
            f"select count(*) from {snap} s where not exists (select 1 from {plan} p where p.sb_key = s.key)"
        )[0][0]
        size = self.warehouse.fetch_all(f"select count(*) from {snap}")[0][0]
        counts = PlanCounts(
            int(added), int(changed), int(removed), int(unchanged), int(null_keys + duplicate_rows)
        )
        if full_resync:
            # everything is sent again; deletes wait for an ordinary run (as Hightouch does)
            counts.changed, counts.unchanged, counts.removed = counts.changed + counts.unchanged, 0, 0
        sample = (
            [InvalidRow(None, f"primary key {self.sync.primary_key} is null ({null_keys} rows)")]
            if null_keys
            else []
        )
        sample += [InvalidRow(str(k), f"duplicate primary key ({n} rows share it)") for k, n in duplicates]
        return PlanResult(self.sync.name, run_id, counts, int(size), full_resync, invalid_sample=sample)

    def _check_guards(self, result: PlanResult) -> None:
        counts = result.counts
        if self.sync.mode != "mirror" or counts.removed == 0:
            return
        valid = counts.added + counts.changed + counts.unchanged
        if valid == 0:
            raise GuardError(
                f"sync {self.sync.name}: the model returned no valid rows, so mirror would delete all "
                f"{counts.removed} records it synced; stopped. If that is really wanted, archive them by hand"
            )
        assert self.sync.guards is not None  # the spec requires guards for mirror
        share = 100.0 * counts.removed / max(result.snapshot_size, 1)
        if share > self.sync.guards.max_delete_pct:
            raise GuardError(
                f"sync {self.sync.name}: the plan deletes {counts.removed} of {result.snapshot_size} records "
                f"({share:.1f}%), above guards.max_delete_pct {self.sync.guards.max_delete_pct}; stopped. "
                "Check the model; raise the guard in the spec if the deletes are right"
            )

    def _changes(self, result: PlanResult, columns: list[str]) -> Iterator[tuple[str, Change]]:
        """Yield (kind, change) for every change, reading the rows in chunks."""
        plan, snap = self.tables.plan, self.tables.snapshot
        mapper = Mapper(self.sync.mapping, columns, required_fields(self.sync))
        selected = "".join(f", p.sb_c{i}" for i in range(len(columns)))
        differs = "" if result.full_resync else " and (s.key is null or s.row_hash <> p.sb_hash)"
        sql = (
            f"select p.sb_key, p.sb_hash, s.destination_id, s.key is null{selected} from {plan} p "
            f"left join {snap} s on s.key = p.sb_key where p.sb_key is not null and p.sb_n = 1{differs}"
        )
        identities = IdentityCheck(required_fields(self.sync))
        for chunk in self.warehouse.stream(sql):
            for key, row_hash, destination_id, is_new, *values in chunk:
                kind = "added" if is_new else "changed"
                try:
                    record = mapper.map(values)
                    identities.check(key, record)
                except InvalidValue as exc:
                    setattr(result.counts, kind, getattr(result.counts, kind) - 1)
                    result.counts.invalid += 1
                    if len(result.invalid_sample) < 2 * SAMPLE_SIZE:
                        result.invalid_sample.append(InvalidRow(key, str(exc)))
                    continue
                action: Action = "keep" if kind == "changed" and self.sync.mode == "insert" else "upsert"
                yield kind, Change(key, action, row_hash, record, destination_id)
        if result.full_resync:
            return
        removed_action: Action = "archive" if self.sync.mode == "mirror" else "forget"
        for chunk in self.warehouse.stream(
            f"select s.key, s.destination_id from {snap} s "
            f"where not exists (select 1 from {plan} p where p.sb_key = s.key)"
        ):
            for key, destination_id in chunk:
                yield "removed", Change(key, removed_action, None, {}, destination_id)

    def _write_batches(
        self, result: PlanResult, columns: list[str], store: BatchStore | None, sample_changes: int
    ) -> None:
        pending: list[list[Any]] = []

        def flush() -> None:
            key = batch_key(self.sync.name, result.run_id, len(result.batches))
            if store is not None:
                store.put_json(key, {"sync": self.sync.name, "run_id": result.run_id, "changes": pending})
            result.batches.append(BatchRef(key, len(pending)))
            pending.clear()

        for kind, change in self._changes(result, columns):
            if len(result.change_sample) < sample_changes:
                result.change_sample.append(
                    {"kind": kind, "key": change.key, "action": change.action, "record": change.record}
                )
            pending.append(change_to_json(change))
            if len(pending) >= self.sync.batch_size:
                flush()
        if pending:
            flush()


def change_to_json(change: Change) -> list[Any]:
    """Return a change as the compact array a batch stores."""
    return [change.key, change.action, change.row_hash, change.destination_id, change.record]


def change_from_json(item: list[Any]) -> Change:
    key, action, row_hash, destination_id, record = item
    return Change(key, action, row_hash, record, destination_id)
