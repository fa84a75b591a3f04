"""Where a run's batches, receipts and manifest live: a local folder, or S3 on AWS.

Rows never travel through Step Functions: states pass these keys and counts. Keys are
``runs/<sync>/<run_id>/{plan.json, manifest-1.json, manifest-2.json, batches/00000.json,
receipts/00000.json}`` (locally also ``journals/00000.jsonl``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from syncback.destinations.base import Change

if TYPE_CHECKING:  # the planner writes through this module: a type-only import avoids the cycle
    from syncback.planner import PlanResult


@runtime_checkable
class Journal(Protocol):
    """A store that can append to a document cheaply (a local file; S3 cannot)."""

    def append_lines(self, key: str, documents: list[Any]) -> None:
        """Append each document as one JSON line to ``key``, durably."""
        ...

    def read_lines(self, key: str) -> list[Any] | None:
        """Return the documents appended to ``key``, or None if there are none."""
        ...


class BatchStore(Protocol):
    """Stores JSON documents by key."""

    def put_json(self, key: str, document: Any) -> None:
        """Write ``document`` under ``key``, replacing what was there."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` (a JSON document already serialised) under ``key``."""
        ...

    def get_json(self, key: str) -> Any:
        """Return the document under ``key``; KeyError if there is none."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Return the document under ``key`` as stored; KeyError if there is none."""
        ...

    def exists(self, key: str) -> bool:
        """Say whether a document is stored under ``key``."""
        ...


def run_prefix(sync: str, run_id: str) -> str:
    """Return the key prefix of one run's documents."""
    return f"runs/{sync}/{run_id}"


def batch_key(sync: str, run_id: str, index: int) -> str:
    return f"{run_prefix(sync, run_id)}/batches/{index:05d}.json"


def receipt_key(batch: str) -> str:
    """Return the receipt's key for the batch stored under ``batch``."""
    return batch.replace("/batches/", "/receipts/")


def journal_key(batch: str) -> str:
    """Return the key of a batch's journal: its outcomes, appended request by request."""
    return batch.replace("/batches/", "/journals/").replace(".json", ".jsonl")


def jobs_key(batch: str) -> str:
    """Return the key of a batch's jobs under way (destinations that work in jobs)."""
    return batch.replace("/batches/", "/jobs/")


def plan_key(sync: str, run_id: str) -> str:
    return f"{run_prefix(sync, run_id)}/plan.json"


def spec_key(sync: str, run_id: str) -> str:
    """Return the key of the spec a run was planned with (``Project.pinned``)."""
    return f"{run_prefix(sync, run_id)}/spec.json"


def manifest_key(sync: str, run_id: str, phase: int = 1) -> str:
    """Return the key of a run's manifest of one phase: the JSON array a Deliver map reads (ItemReader)."""
    return f"{run_prefix(sync, run_id)}/manifest-{phase}.json"


def manifest(plan: PlanResult, phase: int = 1) -> list[dict[str, Any]]:
    """Return the manifest of one phase of a plan: per batch, its key and how many changes it holds."""
    return [{"batch": ref.key, "count": ref.count} for ref in plan.batches_of(phase)]


def dumps(document: Any) -> bytes:
    """Serialise a document the way every store writes it (compact, UTF-8, no NaN)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class LocalBatchStore:
    """A folder of JSON files; writes are atomic (write, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """Return the file that holds ``key``."""
        return self.root / key

    def put_json(self, key: str, document: Any) -> None:
        self.put_bytes(key, dumps(document))

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_bytes(self, key: str) -> bytes:
        path = self.root / key
        if not path.exists():
            raise KeyError(key)
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def append_lines(self, key: str, documents: list[Any]) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.write(b"".join(dumps(d) + b"\n" for d in documents))
            out.flush()
            os.fsync(out.fileno())

    def read_lines(self, key: str) -> list[Any] | None:
        path = self.root / key
        if not path.exists():
            return None
        documents = []
        for line in path.read_bytes().splitlines():
            try:
                documents.append(json.loads(line))
            except ValueError:
                break  # the last line of a process killed while writing it
        return documents

    def remove_batches(self, sync: str, run_id: str) -> None:
        """Delete a committed run's batch files: they hold record values, and are no longer needed."""
        for path in (self.root / run_prefix(sync, run_id) / "batches").glob("*.json"):
            path.unlink()


# ---- a batch's changes ----------------------------------------------------------------------


@dataclass
class BatchRef:
    """A batch of a plan: its key in the store, how many changes it holds, and its phase."""

    key: str
    count: int
    phase: int = 1


def change_line(change: Change) -> str:
    """Return a change as the JSON text of its array in a batch file."""
    return json.dumps(change_to_json(change), separators=(",", ":"), ensure_ascii=False)


def change_to_json(change: Change) -> list[Any]:
    """Return a change as the compact array a batch stores."""
    return [change.key, change.action, change.row_hash, change.destination_id, change.record, change.identity]


def change_from_json(item: list[Any]) -> Change:
    key, action, row_hash, destination_id, record, *identity = item
    return Change(key, action, row_hash, record, destination_id, identity[0] if identity else None)
