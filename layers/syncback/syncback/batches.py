"""Where a run's batches, receipts and manifest live: a local folder, or S3 on AWS.

Rows never travel through Step Functions: states pass these keys and counts. Keys are
``runs/<sync>/<run_id>/{plan.json, manifest.json, batches/00000.json, receipts/00000.json}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the planner writes through this module: a type-only import avoids the cycle
    from syncback.planner import PlanResult


class BatchStore(Protocol):
    """Stores JSON documents by key."""

    def put_json(self, key: str, document: Any) -> None:
        """Write ``document`` under ``key``, replacing what was there."""
        ...

    def get_json(self, key: str) -> Any:
        """Return the document under ``key``; KeyError if there is none."""
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


def plan_key(sync: str, run_id: str) -> str:
    return f"{run_prefix(sync, run_id)}/plan.json"


def manifest_key(sync: str, run_id: str) -> str:
    """Return the key of a run's manifest: the JSON array the Deliver map reads (ItemReader)."""
    return f"{run_prefix(sync, run_id)}/manifest.json"


def manifest(plan: PlanResult) -> list[dict[str, Any]]:
    """Return the manifest of a plan: one item per batch, its key and how many changes it holds."""
    return [{"batch": ref.key, "count": ref.count} for ref in plan.batches]


def dumps(document: Any) -> bytes:
    """Serialise a document the way every store writes it (compact, UTF-8, no NaN)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class LocalBatchStore:
    """A folder of JSON files; writes are atomic (write, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put_json(self, key: str, document: Any) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(dumps(document))
        os.replace(tmp, path)

    def get_json(self, key: str) -> Any:
        path = self.root / key
        if not path.exists():
            raise KeyError(key)
        return json.loads(path.read_bytes())

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()
