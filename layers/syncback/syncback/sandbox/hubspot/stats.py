"""What the sandbox counts, as ``GET /_sandbox/stats`` reports it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Stats:
    requests: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    inputs: int = 0
    created: int = 0
    updated: int = 0
    archived: int = 0
    injected: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "rate_limited": self.rate_limited,
            "inputs": self.inputs,
            "created": self.created,
            "updated": self.updated,
            "archived": self.archived,
            "injected": dict(self.injected),
        }
