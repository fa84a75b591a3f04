"""dbt exposures for the project's syncs, so dbt docs show which syncs read which models."""

from __future__ import annotations

from typing import Any

from syncback.destinations.registry import kind_of
from syncback.spec import Project, SyncSpec


def exposures(project: Project) -> dict[str, Any]:
    """Return a dbt properties document with one exposure (type application) per sync.

    A sync that reads a table (``table: schema.name``), or a SELECT from one table and no join,
    depends on ``ref('name')``: dbt names a model by its last part. One whose SELECT reads several
    tables names no dependency, since which of them are dbt models cannot be told from the SQL
    alone; add them by hand if you want them.
    """
    return {"version": 2, "exposures": [_exposure(sync) for _, sync in sorted(project.syncs.items())]}


def _exposure(sync: SyncSpec) -> dict[str, Any]:
    place = " ".join(str(p) for p in kind_of(sync).place(sync.destination)[:1])
    owner = sync.owner or "unowned"
    exposure: dict[str, Any] = {
        "name": f"syncback_{sync.name}",
        "label": f"{sync.name} to {sync.destination.type}{' ' + place if place else ''}",
        "type": "application",
        "maturity": "high" if sync.schedule else "medium",
        "owner": {"email": owner} if "@" in owner else {"name": owner},
        "description": sync.description or f"syncback sync {sync.name} ({sync.mode})",
        "meta": {
            "syncback": {
                "sync": sync.name,
                "destination": sync.destination.type,
                "mode": sync.mode,
                "schedule": sync.schedule,
                "fields": sorted(sync.mapping),
            }
        },
    }
    read = sync.tables_read()
    # one table, read by FROM with no join: a dbt model by its last part
    table = read[0][1] if len(read) == 1 and read[0][0] == "from" else None
    if table:
        exposure["depends_on"] = [f"ref('{table.rsplit('.', 1)[-1].strip(chr(34))}')"]
    return exposure
