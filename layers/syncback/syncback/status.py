"""Where every sync stands: its owner, schedule, last run, and the alerts its spec asks for that are
open now, read from the run history. ``syncback status`` shows it; ``--json`` prints it."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from syncback.spec import Project, SyncSpec
from syncback.state import RunRecord, StateStore

#: how many of a sync's latest runs status reads
HISTORY = 50
_DONE = ("succeeded", "partial", "failed", "cancelled")


@dataclass
class SyncStatus:
    sync: str
    owner: str | None
    schedule: str | None
    last_run: dict[str, Any] | None
    alerts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def statuses(project: Project, state: StateStore, now: dt.datetime) -> list[SyncStatus]:
    """Return every sync's status, by name."""
    out = []
    for name, sync in sorted(project.syncs.items()):
        runs = [r for r in state.runs(name, HISTORY) if r.status in _DONE]
        runs.sort(key=lambda r: r.started_at, reverse=True)
        last = runs[0] if runs else None
        out.append(
            SyncStatus(
                name,
                sync.owner,
                sync.schedule,
                _summary(last, now) if last else None,
                open_alerts(sync, runs, now),
            )
        )
    return out


def open_alerts(sync: SyncSpec, runs: list[RunRecord], now: dt.datetime) -> list[str]:
    """Return the alerts of ``sync.alerts`` that hold now, given its finished runs (newest first)."""
    rules = sync.alerts
    alerts = []
    last = runs[0] if runs else None
    if last is not None and rules.on_failure and last.status == "failed":
        alerts.append(f"the last run failed: {last.error or 'no error recorded'}")
    if last is not None and rules.max_rejected_pct is not None:
        share = 100.0 * last.rejected / last.records if last.records else 0.0
        if share > rules.max_rejected_pct:
            alerts.append(
                f"{share:.1f}% of the last run's records rejected (alert above {rules.max_rejected_pct:g}%)"
            )
    if last is not None and rules.max_invalid_pct is not None:
        share = 100.0 * last.planned.get("invalid", 0) / last.model_rows if last.model_rows else 0.0
        if share > rules.max_invalid_pct:
            alerts.append(
                f"{share:.1f}% of the model's rows invalid (alert above {rules.max_invalid_pct:g}%)"
            )
    if rules.max_hours_without_success is not None:
        good = next((r for r in runs if r.good), None)
        age = _hours(good.finished_at or good.started_at, now) if good else None
        if age is None or age > rules.max_hours_without_success:
            since = (
                "no successful run yet"
                if age is None
                else f"the last successful run ended {age:.1f} hours ago"
            )
            alerts.append(f"{since} (alert after {rules.max_hours_without_success:g} hours)")
    return alerts


def _summary(run: RunRecord, now: dt.datetime) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "trigger": run.trigger,
        "finished_at": run.finished_at,
        "age_hours": round(_hours(run.finished_at or run.started_at, now), 2),
        "planned": run.planned,
        "delivered": run.delivered,
        "rejected": run.rejected,
        "undelivered": run.undelivered,
        "error": run.error,
    }


def _hours(stamp: str, now: dt.datetime) -> float:
    moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return (now - moment).total_seconds() / 3600
