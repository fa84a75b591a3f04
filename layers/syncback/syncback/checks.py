"""Data checks: a sync's ``checks:``, evaluated in the warehouse before anything is sent.

Each check is one of::

    {column: email, max_null_pct: 0}                 at most this % of the column is null
    {row_count: {min: 1000, max: ..., max_change_pct: 20}}   the model's rows, and their change
                                                     against the sync's last run (sync_runs)
    {column: lead_score, between: [0, 100]}          every non-null value within (inclusive)
    {column: plan, accepted_values: [free, pro]}     every non-null value one of these
    {column: customer_id, unique: true}              no value twice
    {column: last_seen, max_age: 2 days}             the newest value younger than this

with ``severity: error`` (the default: a failure stops the run before delivery, a GuardError) or
``warn`` (the run goes on; the warning is in its record). Every check of a sync is computed by one
aggregate query over the model, so the model is read once for all of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from syncback.errors import ModelError
from syncback.spec_parts import Check, RowCount, max_age_seconds
from syncback.warehouses.base import Warehouse
from syncback.warehouses.dialect import literal


@dataclass
class CheckResult:
    check: str
    severity: str
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    warehouse: Warehouse,
    model_sql: str,
    columns: list[str],
    checks: list[Check],
    last_rows: int | None,
    now: dt.datetime,
    where: str,
) -> list[CheckResult]:
    """Evaluate ``checks`` over the model in one query. ``columns``: the model's columns, as the
    warehouse names them (a check names one in any case); ``last_rows``: the rows the sync's last
    run read (None: no run yet, so a change cannot be measured); ``where``: the spec file, for errors."""
    if not checks:
        return []
    named = {c.lower(): c for c in columns}
    parts = ["count(*)"]
    for index, check in enumerate(checks):
        column = None
        if check.column is not None:
            if check.column.lower() not in named:
                raise ModelError(
                    f"{where}: checks[{index}].column: the model has no column {check.column!r}; "
                    f"it has {', '.join(columns)}"
                )
            column = warehouse.dialect.quote(named[check.column.lower()])
        parts.append(_aggregate(check, column))
    row = warehouse.fetch_all(f"select {', '.join(parts)} from ({model_sql}) as sb_model")[0]
    rows = int(row[0] or 0)
    return [_judge(c, v, rows, last_rows, now) for c, v in zip(checks, row[1:], strict=True)]


def _aggregate(check: Check, col: str | None) -> str:
    if check.kind == "max_null_pct":
        return f"sum(case when {col} is null then 1 else 0 end)"
    if check.kind == "between":
        low, high = check.between or (0, 0)
        return f"sum(case when {col} < {low!r} or {col} > {high!r} then 1 else 0 end)"
    if check.kind == "accepted_values":
        values = ", ".join(literal(str(v)) for v in check.accepted_values or [])
        return (
            f"sum(case when {col} is not null and cast({col} as varchar) not in ({values}) then 1 else 0 end)"
        )
    if check.kind == "unique":
        return f"count({col}) - count(distinct {col})"
    if check.kind == "max_age":
        return f"max({col})"
    return "0"  # row_count: the rows are counted once, for all checks


def _judge(check: Check, value: Any, rows: int, last_rows: int | None, now: dt.datetime) -> CheckResult:
    def result(passed: bool, detail: str) -> CheckResult:
        return CheckResult(check.title, check.severity, passed, detail)

    if check.kind == "max_null_pct":
        share = 100.0 * int(value or 0) / rows if rows else 0.0
        return result(
            share <= (check.max_null_pct or 0), f"{share:.2f}% null ({int(value or 0):,} of {rows:,} rows)"
        )
    if check.kind in ("between", "accepted_values"):
        outside = int(value or 0)
        return result(
            outside == 0, f"{outside:,} of {rows:,} rows outside" if outside else f"all {rows:,} rows within"
        )
    if check.kind == "unique":
        repeated = int(value or 0)
        return result(repeated == 0, f"{repeated:,} repeated values" if repeated else "no value twice")
    if check.kind == "max_age":
        return _judge_age(check, value, now, result)
    bounds = check.row_count or RowCount.model_validate({})
    problems = []
    if bounds.min is not None and rows < bounds.min:
        problems.append(f"below min {bounds.min:,}")
    if bounds.max is not None and rows > bounds.max:
        problems.append(f"above max {bounds.max:,}")
    change = ""
    if bounds.max_change_pct is not None and last_rows:
        pct = 100.0 * (rows - last_rows) / last_rows
        change = f", {pct:+.1f}% against the last run's {last_rows:,}"
        if abs(pct) > bounds.max_change_pct:
            problems.append(f"changed more than {bounds.max_change_pct:g}%")
    return result(not problems, f"{rows:,} rows{change}" + (f": {'; '.join(problems)}" if problems else ""))


def _judge_age(
    check: Check, newest: Any, now: dt.datetime, result: Callable[[bool, str], CheckResult]
) -> CheckResult:
    if newest is None:
        return result(False, "no value at all")
    if isinstance(newest, str):
        newest = dt.datetime.fromisoformat(newest.replace("Z", "+00:00"))
    if isinstance(newest, dt.date) and not isinstance(newest, dt.datetime):
        newest = dt.datetime.combine(newest, dt.time(), dt.UTC)
    if not isinstance(newest, dt.datetime):
        return result(False, f"the column is not a date or timestamp (newest value {type(newest).__name__})")
    if newest.tzinfo is None:
        newest = newest.replace(tzinfo=dt.UTC)  # a timestamp without a zone is read as UTC
    age = (now - newest).total_seconds()
    limit = max_age_seconds(check.max_age or "")
    return result(age <= limit, f"newest {newest:%Y-%m-%d %H:%M} UTC, {age / 3600:.1f} hours old")
