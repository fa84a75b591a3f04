"""What the sandbox holds: records by type and id, the unique-value index, optional SQLite write-through."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _Record:
    id: int
    properties: dict[str, str]
    created_at: str
    updated_at: str
    archived: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "properties": dict(self.properties),
            "archived": self.archived,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }

    def api(self, object_type: str) -> dict[str, Any]:
        """Return the record as HubSpot answers it, with the properties HubSpot always adds."""
        modified = "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"
        defaults = {"hs_object_id": str(self.id), "createdate": self.created_at, modified: self.updated_at}
        return {**self.public(), "properties": {**defaults, **self.properties}}


class _Store:
    """Records by type and id, an index from unique value to live record, optional SQLite write-through."""

    def __init__(self, unique: dict[str, str], db_path: str | None) -> None:
        self.unique = unique
        self._db: sqlite3.Connection | None = None
        self.clear(drop_rows=False)
        if db_path:
            self._open(db_path)

    def clear(self, drop_rows: bool = True) -> None:
        self.records: dict[str, dict[int, _Record]] = {}
        self.order: dict[str, list[int]] = {}  # ids ascending, for paging with bisect
        self.index: dict[str, dict[str, int]] = {}
        self.next_id = 1
        self._dirty: dict[tuple[str, int], _Record] = {}
        if drop_rows and self._db is not None:
            self._db.execute("DELETE FROM objects")
            self._db.commit()

    def _open(self, path: str) -> None:
        # one sandbox lock guards every use, so the connection may move between handler threads
        db = sqlite3.connect(path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS objects (object_type TEXT NOT NULL, id INTEGER NOT NULL, "
            "properties TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
            "archived INTEGER NOT NULL, PRIMARY KEY (object_type, id))"
        )
        rows = db.execute("SELECT object_type, id, properties, created_at, updated_at, archived FROM objects")
        for object_type, oid, props, created, updated, archived in sorted(rows, key=lambda r: int(r[1])):
            self._put(object_type, _Record(oid, json.loads(props), created, updated, bool(archived)))
            self.next_id = max(self.next_id, oid + 1)
        self._db = db

    def _key(self, object_type: str, record: _Record) -> str | None:
        prop = self.unique.get(object_type)
        return (record.properties.get(prop) or None) if prop else None  # a cleared value is no key

    def _put(self, object_type: str, record: _Record) -> None:
        self.records.setdefault(object_type, {})[record.id] = record
        self.order.setdefault(object_type, []).append(record.id)
        key = self._key(object_type, record)
        if key is not None and not record.archived:
            self.index.setdefault(object_type, {})[key] = record.id

    def find(self, object_type: str, key: str) -> _Record | None:
        """Return the live record whose unique property (normalized) is key."""
        oid = self.index.get(object_type, {}).get(key)
        return None if oid is None else self.records[object_type][oid]

    def get(self, object_type: str, object_id: str) -> _Record | None:
        record = self.records.get(object_type, {}).get(int(object_id)) if object_id.isdigit() else None
        return record

    def create(self, object_type: str, properties: dict[str, str], now: str) -> _Record:
        record = _Record(self.next_id, dict(properties), now, now)
        self.next_id += 1
        self._put(object_type, record)
        self._dirty[object_type, record.id] = record
        return record

    def update(self, object_type: str, record: _Record, properties: dict[str, str], now: str) -> None:
        old_key = self._key(object_type, record)
        record.properties.update(properties)
        record.updated_at = now
        new_key = self._key(object_type, record)
        if new_key != old_key:
            index = self.index.setdefault(object_type, {})
            if old_key is not None:
                index.pop(old_key, None)
            if new_key is not None:
                index[new_key] = record.id
        self._dirty[object_type, record.id] = record

    def archive(self, object_type: str, record: _Record, now: str) -> None:
        record.archived = True
        record.updated_at = now
        key = self._key(object_type, record)
        if key is not None:
            self.index.get(object_type, {}).pop(key, None)
        self._dirty[object_type, record.id] = record

    def commit(self) -> None:
        """Write this request's changes to SQLite in one transaction (no-op in memory)."""
        if self._db is not None and self._dirty:
            self._db.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (t, r.id, json.dumps(r.properties), r.created_at, r.updated_at, int(r.archived))
                    for (t, _), r in self._dirty.items()
                ],
            )
            self._db.commit()
        self._dirty.clear()

    def close(self) -> None:
        self.commit()
        if self._db is not None:
            self._db.close()
            self._db = None
