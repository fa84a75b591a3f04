"""The faults a sandbox injects on purpose: which ones are in force, when they strike, what they answer."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields
from typing import Any

from .responses import _LOCKED, _SERVER_ERRORS, _error, _rate_limited, _Response


@dataclass
class Faults:
    """What the sandbox does wrong on purpose; each rate is a fraction of the batch write requests."""

    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_timeout: float = 0.0
    rate_reset: float = 0.0
    timeout_seconds: float = 5.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.5
    reject_values: set[str] = field(default_factory=set)
    fail_batch_values: set[str] = field(default_factory=set)
    seed: int | None = None
    retry_after_429: float | None = None  # when set, injected 429s carry Retry-After (real ones never do)
    rate_423: float = 0.0
    errors_without_trace: bool = False  # per-record errors name their record by value only (context.id)

    def __post_init__(self) -> None:
        exclusive = [self.rate_429, self.rate_5xx, self.rate_423, self.rate_reset, self.rate_timeout]
        if any(not 0.0 <= r <= 1.0 for r in [*exclusive, self.slow_rate]) or sum(exclusive) > 1.0 + 1e-9:
            raise ValueError("fault rates must be within 0..1 and the exclusive ones must sum to at most 1")
        self.reject_values = {str(v) for v in self.reject_values}
        self.fail_batch_values = {str(v) for v in self.fail_batch_values}

    def to_json(self) -> dict[str, Any]:
        """Return the fields as JSON values, sets as sorted lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: sorted(v) if isinstance(v, set) else v for k, v in out.items()}

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        """Return the Faults a JSON object describes; raise ValueError on unknown fields."""
        if not isinstance(data, dict):
            raise ValueError("faults must be a JSON object")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        values: dict[str, Any] = dict(data)
        for name in ("reject_values", "fail_batch_values"):
            if name in values:
                values[name] = set(values[name])
        return cls(**values)


def _draw(faults: Faults, rng: random.Random, write: bool) -> tuple[str | None, bool]:
    """Return the fault that strikes this request (or None) and whether it is slowed; hold the lock."""
    fault = _draw_fault(faults, rng) if write else None
    slow = write and faults.slow_rate > 0 and rng.random() < faults.slow_rate
    return fault, slow


def _draw_fault(faults: Faults, rng: random.Random) -> str | None:
    # one draw over disjoint slices, so each rate is the exact chance of its fault
    draw = rng.random()
    for name, rate in (
        ("429", faults.rate_429),
        ("5xx", faults.rate_5xx),
        ("423", faults.rate_423),
        ("reset", faults.rate_reset),
        ("timeout", faults.rate_timeout),
    ):
        if draw < rate:
            return name
        draw -= rate
    return None


def _fault_response(fault: str, faults: Faults, rng: random.Random, lock: threading.Lock) -> _Response:
    """Return the answer a fault gives in place of the real one; ``lock`` guards ``rng``."""
    if fault == "reset":
        return _Response(0, reset=True)
    if fault == "423":
        return _error(423, _LOCKED, "LOCKED")
    if fault == "5xx":
        with lock:
            status = rng.choice(sorted(_SERVER_ERRORS))
        category, message = _SERVER_ERRORS[status]
        return _error(status, message, category)
    response = _rate_limited("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.")
    if faults.retry_after_429 is not None:
        # not integral seconds when a test asks for less than one; HTTP wants an integer
        response.headers["Retry-After"] = f"{faults.retry_after_429:g}"
    return response
