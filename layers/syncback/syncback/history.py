"""The record in the warehouse: every run, and every record each run planned, in the state schema.

Two tables, shared by the project's syncs (each row names its sync)::

    sync_runs       one row a run or replay: sync, run_id, status, "trigger" (quoted: a keyword in
                    Snowflake), started_at, finished_at,
                    added, changed, removed, unchanged, invalid, delivered, rejected, skipped,
                    undelivered, error
    sync_changelog  one row a record a run planned: sync, run_id, key, change (added / changed /
                    removed), status (delivered / rejected / skipped / invalid / undelivered),
                    reason, destination_id, "at" (quoted: a keyword), fields (the names of the
                    fields sent, comma-joined; never their values)

Commit and replay write them from the outcomes they stage, set-wise (``insert ... select``), before
the snapshot moves, so "added" or "changed" is what the snapshot said when the run planned; the
planner writes the invalid rows of a run from its plan table. Each write first removes what an
earlier attempt of the same run wrote, so a retried commit logs once. Rows older than the
project's ``state.retention_days`` are pruned by each commit of their sync.

The local run history and the DynamoDB run table stay as they are, for operations; these tables are
the record (monitoring, and the GDPR record of what personal data went where).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from syncback.snapshot import SnapshotTables, same_target
from syncback.state import RunRecord
from syncback.warehouses.base import Warehouse
from syncback.warehouses.dialect import literal

RUNS_COLUMNS = (
    'sync varchar, run_id varchar, status varchar, "trigger" varchar, started_at timestamp, '
    "finished_at timestamp, added bigint, changed bigint, removed bigint, unchanged bigint, "
    "invalid bigint, delivered bigint, rejected bigint, skipped bigint, undelivered bigint, error varchar"
)
CHANGELOG_COLUMNS = (
    "sync varchar, run_id varchar, key varchar, change varchar, status varchar, reason varchar, "
    'destination_id varchar, "at" timestamp, fields varchar'
)
_COUNTS = ("added", "changed", "removed", "unchanged", "invalid")


def ensure_history(warehouse: Warehouse, tables: SnapshotTables) -> None:
    """Create the state schema's run and change log tables, if they are not there."""
    warehouse.execute(f"create schema if not exists {tables.schema}")
    warehouse.execute(f"create table if not exists {tables.runs} ({RUNS_COLUMNS})")
    warehouse.execute(f"create table if not exists {tables.changelog} ({CHANGELOG_COLUMNS})")


def log_outcomes(
    warehouse: Warehouse,
    tables: SnapshotTables,
    stage: str,
    run_id: str,
    target: str,
    fields: Sequence[str],
    cleared: Sequence[str],
    now: dt.datetime,
) -> None:
    """Log the outcomes staged for ``run_id`` (``snapshot.OUTCOME_COLUMNS``), one row a record, before
    they are applied to the snapshot. ``fields``: what a write sends; ``cleared``: what a removal
    that clears fields empties."""
    ensure_history(warehouse, tables)
    log, snap = tables.changelog, tables.snapshot
    warehouse.execute(
        f"delete from {log} where sync = ? and run_id = ? and status <> 'invalid'", [tables.sync, run_id]
    )
    change = (
        "case when c.action in ('archive', 'forget', 'clear') then 'removed' "
        "when s.key is not null and not s.removed then 'changed' else 'added' end"
    )
    sent = (
        f"case when c.action in ('upsert', 'keep') then {literal(','.join(fields))} "
        f"when c.action = 'clear' then {literal(','.join(cleared))} else '' end"
    )
    warehouse.execute(
        f"insert into {log} select ?, ?, c.key, {change}, "
        "case when c.status = 'unanswered' then 'undelivered' else c.status end, c.reason, "
        f"coalesce(c.destination_id, s.destination_id), cast(? as timestamp), {sent} "
        f"from {stage} c left join {snap} s on s.key = c.key and {same_target('s', target)} "
        "where c.action <> 'release'",
        [tables.sync, run_id, _stamp(now)],
    )


def log_invalid(
    warehouse: Warehouse, tables: SnapshotTables, plan_table: str, run_id: str, now: dt.datetime
) -> None:
    """Log the invalid rows of a plan (its plan table's rows with a reason), with that reason."""
    ensure_history(warehouse, tables)
    log = tables.changelog
    warehouse.execute(
        f"delete from {log} where sync = ? and run_id = ? and status = 'invalid'", [tables.sync, run_id]
    )
    warehouse.execute(
        f"insert into {log} select ?, ?, sb_key, case when sb_live then 'changed' else 'added' end, "
        f"'invalid', sb_reason, s_dest, cast(? as timestamp), '' from {plan_table} where sb_reason is not null",
        [tables.sync, run_id, _stamp(now)],
    )


def log_run(warehouse: Warehouse, tables: SnapshotTables, record: RunRecord, retention_days: int) -> None:
    """Write ``record`` as its sync's row for the run (replacing one an earlier attempt wrote), and
    prune the sync's rows of both tables older than ``retention_days``."""
    ensure_history(warehouse, tables)
    counts = [int(record.planned.get(name, 0)) for name in _COUNTS]
    warehouse.execute(
        f"delete from {tables.runs} where sync = ? and run_id = ?", [tables.sync, record.run_id]
    )
    warehouse.execute(
        f"insert into {tables.runs} values (?, ?, ?, ?, cast(? as timestamp), cast(? as timestamp), "
        "?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            tables.sync,
            record.run_id,
            record.status,
            record.trigger,
            _stamp(_parse(record.started_at)),
            _stamp(_parse(record.finished_at)) if record.finished_at else None,
            *counts,
            record.delivered,
            record.rejected,
            record.skipped,
            record.undelivered,
            record.error,
        ],
    )
    cutoff = _stamp(dt.datetime.now(dt.UTC) - dt.timedelta(days=retention_days))
    warehouse.execute(
        f'delete from {tables.changelog} where sync = ? and "at" < cast(? as timestamp)',
        [tables.sync, cutoff],
    )
    warehouse.execute(
        f"delete from {tables.runs} where sync = ? and started_at < cast(? as timestamp)",
        [tables.sync, cutoff],
    )


def _parse(text: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _stamp(moment: dt.datetime) -> str:
    """Return ``moment`` as the warehouse's timestamp text, in UTC (the tables hold UTC)."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
