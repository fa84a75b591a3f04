"""The snapshot: per sync, a warehouse table of what the destination holds of each model row.

One row per key the sync ever delivered::

    key             the model row's primary key, as text
    row_hash        a hash of the record last accepted (``Dialect.row_hash``); NULL: send it again (it
                    left the model, gave its identifier away, or lost its destination record to
                    another key)
    destination_id  the destination's id of the record (NULL: unknown, or archived)
    identity        the normalised identifier last sent (an email), to order identifier moves
    created         this sync created the destination record (mirror archives only those)
    removed         the row left the model (a tombstone: replays of older versions stay stale, and a
                    returning row finds its destination record again)
    version         the version of what was written: the plan's version, which only grows
    target          which destination the row is about (type, object, id property or URL): a
                    sync pointed elsewhere starts afresh rather than write by another object's ids
    run_id, committed_at   which run or replay wrote the row, and when

Commit and replay change it through one function, ``apply_outcomes``: set-wise, in one
transaction, and only where the snapshot does not already hold a newer version.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from syncback.warehouses.base import Warehouse
from syncback.warehouses.dialect import literal

SNAPSHOT_COLUMNS = (
    "key varchar, row_hash varchar, destination_id varchar, identity varchar, created boolean, "
    "removed boolean, version bigint, target varchar, run_id varchar, committed_at timestamp"
)
# columns added since the first release, with what the rows written before them mean
_ADDED = {
    "identity": ("varchar", "null"),
    "created": ("boolean", "true"),  # mirror archived everything syncback wrote: keep doing so
    "removed": ("boolean", "false"),
    "version": ("bigint", "0"),
    "target": ("varchar", "null"),  # rows written before targets were recorded match any
}
#: one outcome of a change, as commit and replay stage them: what was asked, what the destination did
OUTCOME_COLUMNS = (
    "key varchar, status varchar, destination_id varchar, created boolean, action varchar, "
    "row_hash varchar, identity varchar, reason varchar, seq integer, version bigint, batch integer"
)
OUTCOME_NAMES = tuple(column.split()[0] for column in OUTCOME_COLUMNS.split(", "))
LOAD_ROWS = 50_000

# The one rule for what an outcome does to its key's snapshot row, for commit and replay alike:
# put (the destination holds this record now), release (it gave its identifier away: send it again),
# gone (archived), left (the row left the model, the record stays); NULL: nothing (rejected, not
# sent, or skipped with nothing learnt, as in update mode where the record does not exist).
# An unanswered write (its request may have been done: the answer was lost) is taken as done to the
# record it named or, by identifier, to the record another key holds that identifier on, with no hash:
# the next run writes it again, by that record's id, whatever its values are by then.
EFFECT = (
    "case when c.status = 'unanswered' then "
    "case when c.action = 'upsert' and c.destination_id is not null then 'put' end "
    "when c.status not in ('delivered', 'skipped') then null "
    "when c.action = 'archive' then 'gone' "
    "when c.action in ('forget', 'clear') then 'left' "
    "when c.action = 'release' then case when c.status = 'delivered' then 'release' end "
    "when c.action = 'keep' or c.status = 'delivered' or c.destination_id is not null then 'put' end"
)


@dataclass(frozen=True)
class SnapshotTables:
    """The names of one sync's tables in the state schema."""

    schema: str
    sync: str

    @property
    def snapshot(self) -> str:
        return f"{self.schema}.snapshot__{self.sync}"

    @property
    def runs(self) -> str:
        """The project's run log (``history``)."""
        return f"{self.schema}.sync_runs"

    @property
    def changelog(self) -> str:
        """The project's change log (``history``)."""
        return f"{self.schema}.sync_changelog"

    def scratch(self, purpose: str) -> str:
        """Return a fresh table name for one plan, commit or replay (never shared between two)."""
        return f"{self.schema}.{purpose}__{self.sync}__{secrets.token_hex(4)}"


def ensure_snapshot(warehouse: Warehouse, tables: SnapshotTables) -> None:
    """Create the state schema and the sync's snapshot table, or bring an older one up to date."""
    warehouse.execute(f"create schema if not exists {tables.schema}")
    warehouse.execute(f"create table if not exists {tables.snapshot} ({SNAPSHOT_COLUMNS})")
    have = {name.lower() for name, _ in warehouse.columns(f"select * from {tables.snapshot}")}
    for column, (kind, old_rows) in _ADDED.items():
        if column not in have:
            warehouse.execute(f"alter table {tables.snapshot} add column {column} {kind}")
            warehouse.execute(f"update {tables.snapshot} set {column} = {old_rows}")


def outcome_stage(warehouse: Warehouse, tables: SnapshotTables) -> str:
    """Create a table for the outcomes of one commit or replay (``OUTCOME_COLUMNS``); return its name."""
    ensure_snapshot(warehouse, tables)
    stage = tables.scratch("commit")
    warehouse.create_scratch(stage, OUTCOME_COLUMNS)
    return stage


def stage_rows(warehouse: Warehouse, stage: str, rows: Iterable[tuple[object, ...]]) -> None:
    """Add outcome rows (``OUTCOME_NAMES`` order) made in Python: a replay's, a journal's."""
    chunk: list[tuple[object, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == LOAD_ROWS:
            warehouse.load_rows(stage, OUTCOME_NAMES, chunk)
            chunk = []
    if chunk:
        warehouse.load_rows(stage, OUTCOME_NAMES, chunk)


def apply_outcomes(
    warehouse: Warehouse, tables: SnapshotTables, stage: str, run_id: str, target: str, now: dt.datetime
) -> int:
    """Apply the staged outcomes to the snapshot in one transaction; return how many rows changed.

    A key's row changes only if the snapshot holds no newer version of it (a replay of an old dead
    letter never undoes a later run). A destination id belongs to one key: a key whose record
    another key took loses it, and is sent again. Whether this sync created a record follows the
    record, not the key: a write that does not say (``created`` None: a write by the record's id)
    went to the record the key held, even where that record's id changed with it (a Mailchimp
    member is the hash of its address, and moves with it). All of it is set-wise SQL: memory does not grow with the outcomes.
    """
    return _merge(warehouse, tables, stage, run_id, target, now)


def _merge(
    warehouse: Warehouse, tables: SnapshotTables, stage: str, run_id: str, target: str, now: dt.datetime
) -> int:
    snap, fresh, following = tables.snapshot, f"{stage}_next", f"{stage}_snapshot"
    repeated, newest = f"{stage}_repeated", f"{stage}_newest"
    stamp = now.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    # the record an unanswered write by identifier went to: the one another key holds it on, unless
    # that key gave it up (or had its record archived) in this run, answered or not
    holders = (
        f"(select identity, min(destination_id) as destination_id from {snap} s "
        f"where identity in (select identity from {stage} where status = 'unanswered') "
        f"and destination_id is not null and {same_target('s', target)} "
        f"and key not in (select key from {stage} where action in ('release', 'archive')) "
        "group by identity having count(distinct destination_id) = 1)"
    )
    outcomes = (
        "(select c.key, c.status, c.action, c.version, c.row_hash, c.identity, c.created, c.seq, "
        "coalesce(c.destination_id, o.destination_id) as destination_id "
        f"from {stage} c left join {holders} o on c.status = 'unanswered' and c.destination_id is null "
        "and o.identity = c.identity)"
    )
    effects = (
        f"(select key, {EFFECT} as effect, version, row_hash, destination_id, identity, "
        f"case when c.status = 'delivered' then c.created else false end as created, seq from {outcomes} c)"
    )
    put = "c.effect = 'put'"
    destination = (
        f"case when {put} then coalesce(c.destination_id, s.destination_id) "
        "when c.effect in ('release', 'left') then s.destination_id end"
    )
    # the record ids the outcomes concern: those they name, those their keys hold now, and those
    # holding the identifiers of unanswered writes (``holders``)
    named = (
        f"select destination_id from {stage} where destination_id is not null union all "
        f"select destination_id from {snap} where destination_id is not null and (key in "
        f"(select key from {stage}) or identity in (select identity from {stage} where status = 'unanswered'))"
    )
    warehouse.create_scratch(fresh, SNAPSHOT_COLUMNS)
    try:
        # what the snapshot becomes is worked out before the transaction (DuckDB holds a
        # transaction's work in memory, and these read the most), a step a statement: one statement
        # ranking, joining and writing at once ran out of memory at 192MB. First the newest outcome
        # of each key: only keys with more than one (a move's release and write) are ranked
        # (ranking every key took a 10M-row commit 13 s more)
        warehouse.create_scratch_as(repeated, f"select key from {stage} group by key having count(*) > 1")
        warehouse.create_scratch_as(
            newest,
            f"select * from {effects} e where e.effect is not null and key not in (select key from {repeated}) "
            f"union all select * from {effects} e where e.effect is not null and key in (select key from {repeated}) "
            "qualify row_number() over (partition by key order by seq desc) = 1",
        )
        # then what it makes of the key's snapshot row, unless that row holds a newer version
        warehouse.execute(
            f"insert into {fresh} select c.key, "
            f"case when {put} then c.row_hash end, "
            f"{destination}, "
            f"case when {put} then coalesce(c.identity, s.identity) when c.effect = 'left' then s.identity end, "
            f"case when {put} then coalesce(c.created, false) or coalesce(h.created, 0) = 1 "
            "or ((c.destination_id is null or c.created is null) and coalesce(s.created, false)) "
            "when c.effect in ('release', 'left') then coalesce(s.created, false) else false end, "
            "c.effect in ('gone', 'left'), "
            "case when c.effect = 'release' then coalesce(s.version, c.version) else c.version end, "
            f"{literal(target)}, ?, cast(? as timestamp) "
            f"from {newest} c "
            # the snapshot rows of the outcomes' keys only: a join against all of it held too much
            f"left join (select * from {snap} s where key in (select key from {stage}) "
            f"and {same_target('s', target)}) s on s.key = c.key "
            # whether any holder of the record's id (this key or another) had created it: looked up
            # for the ids the outcomes name, not grouped over the whole snapshot (ten million groups
            # did not fit in DuckDB's memory when a 1% commit met a 10M snapshot)
            f"left join (select destination_id, max(case when created then 1 else 0 end) as created from {snap} "
            f"where destination_id in ({named}) group by destination_id) h "
            f"on h.destination_id = coalesce(c.destination_id, s.destination_id) and {put} "
            "where s.key is null or s.version is null or s.version <= c.version",
            [run_id, stamp],
        )
        # two outcomes naming one record: a row in the model keeps it over one that left (a row
        # taking a departed row's email takes its record), else the newest; the other is re-sent
        warehouse.execute(
            f"update {fresh} set destination_id = null, row_hash = null, identity = null, created = false "
            "where key in ("
            f"select key from (select key, row_number() over (partition by destination_id "
            f"order by removed, version desc, key) as n from {fresh} where destination_id is not null) d "
            "where d.n > 1)"
        )
        changed = int(warehouse.fetch_all(f"select count(*) from {fresh}")[0][0])
        warehouse.execute("begin")
        try:
            # a key whose record another key now holds loses it (and the identifier it held there),
            # and is sent again next run
            warehouse.execute(
                f"update {snap} set destination_id = null, row_hash = null, identity = null, created = false "
                f"where destination_id in (select destination_id from {fresh} where destination_id is not null) "
                f"and key not in (select key from {fresh})"
            )
            names = ", ".join(column.split()[0] for column in SNAPSHOT_COLUMNS.split(", "))
            rewrite = warehouse.dialect.rewrite_from_rows
            if rewrite is not None and changed >= rewrite:
                # the snapshot written anew: its rows the outcomes leave alone, then the outcomes' rows
                warehouse.create_scratch_as(
                    following,
                    f"select {names} from {snap} s where not exists (select 1 from {fresh} f where f.key = s.key) "
                    f"union all select {names} from {fresh}",
                )
                swap_in(warehouse, tables, following)
            else:
                warehouse.execute(f"delete from {snap} where key in (select key from {fresh})")
                warehouse.execute(f"insert into {snap} ({names}) select {names} from {fresh}")
            warehouse.execute("commit")
        except BaseException:
            warehouse.execute("rollback")
            raise
    finally:
        for table in (repeated, newest, fresh, following):
            warehouse.execute(f"drop table if exists {table}")
    return changed


def swap_in(warehouse: Warehouse, tables: SnapshotTables, written: str) -> None:
    """Put the table ``written`` (the snapshot written anew) in the snapshot's place, within the
    caller's transaction."""
    warehouse.execute(f"drop table {tables.snapshot}")
    warehouse.execute(f"alter table {written} rename to {tables.snapshot.split('.')[-1]}")


def same_target(alias: str, target: str) -> str:
    """Return SQL that is true when the snapshot row ``alias`` is about destination ``target``."""
    return f"({alias}.target is null or {alias}.target = {literal(target)})"


@dataclass(frozen=True)
class SnapshotEntry:
    row_hash: str | None
    destination_id: str | None
    version: int
    removed: bool


def read_snapshot(
    warehouse: Warehouse, tables: SnapshotTables, keys: Sequence[str]
) -> dict[str, SnapshotEntry]:
    """Return the snapshot rows of ``keys`` (those it has); for replays, a few keys at a time."""
    if not keys:
        return {}
    ensure_snapshot(warehouse, tables)
    found: dict[str, SnapshotEntry] = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        marks = ", ".join("?" for _ in chunk)
        for key, row_hash, destination_id, version, removed in warehouse.fetch_all(
            f"select key, row_hash, destination_id, version, removed from {tables.snapshot} "
            f"where key in ({marks})",
            chunk,
        ):
            found[key] = SnapshotEntry(row_hash, destination_id, int(version or 0), bool(removed))
    return found


def live_size(warehouse: Warehouse, tables: SnapshotTables) -> int:
    """Return how many records the snapshot holds for rows still in the model's last plan."""
    ensure_snapshot(warehouse, tables)
    return int(warehouse.fetch_all(f"select count(*) from {tables.snapshot} where not removed")[0][0])
