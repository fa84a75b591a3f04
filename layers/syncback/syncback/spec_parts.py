"""The parts spec files are made of, shared by the sync spec and every destination's config."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SECRET_REF = re.compile(r"^(env|secret):[A-Za-z_][A-Za-z0-9_./+=@-]*$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
URL_PATTERN = r"^https?://[^\s/]+(/[^\s]*)?$"


def secret_ref(value: str) -> str:
    """Return ``value`` if it is an env: or secret: reference; raise ValueError saying how to write one."""
    if not SECRET_REF.match(value):
        raise ValueError(
            "secrets are never written in the file: use env:NAME (an environment variable) "
            "or secret:NAME (an AWS Secrets Manager secret)"
        )
    return value


SecretRef = Annotated[str, Field(description="env:NAME or secret:NAME; never the secret itself")]


def https(value: str) -> str:
    """Refuse http:// but on this machine (a sandbox, a test receiver): records and tokens would
    cross the network in clear text."""
    host = value.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if value.startswith("http://") and host not in _LOOPBACK:
        raise ValueError(
            "http:// sends records and tokens in clear text; use https:// (http:// is for this machine only: "
            "127.0.0.1, localhost, [::1])"
        )
    return value


class Strict(BaseModel):
    """A spec model: unknown fields are refused, values cannot change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RateLimit(Strict):
    """A request budget: at most ``requests`` in any rolling ``per_seconds``."""

    requests: int = Field(100, gt=0)
    per_seconds: float = Field(10.0, gt=0)


class DestinationBase(Strict):
    """What every destination's config has; each registered destination's model extends it, its
    ``type`` narrowed to one ``Literal`` name (the spec tells the configs apart by it)."""

    type: str
    rate_limit: RateLimit | None = None
    concurrency: int = Field(4, ge=1, le=64, description="batches delivered in parallel")
    timeout_s: float = Field(30.0, gt=0, description="seconds to wait for one answer")


# ---- data checks (evaluated by ``checks``) -------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(second|minute|hour|day|week)s?\s*$")
_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "week": 604_800}
_COLUMN_KINDS = ("max_null_pct", "between", "accepted_values", "unique", "max_age")


class RowCount(Strict):
    min: int | None = Field(None, ge=0, description="at least this many rows")
    max: int | None = Field(None, ge=0, description="at most this many rows")
    max_change_pct: float | None = Field(
        None, ge=0, description="at most this % more or fewer rows than the sync's last run read"
    )


class Check(Strict):
    """One data check of a sync (exactly one kind; a column for the column kinds)."""

    column: str | None = Field(None, description="the model column checked")
    max_null_pct: float | None = Field(None, ge=0, le=100)
    row_count: RowCount | None = None
    between: tuple[float, float] | None = Field(None, description="[low, high], inclusive")
    accepted_values: list[str | int | float | bool] | None = Field(None, min_length=1)
    unique: Literal[True] | None = None
    max_age: str | None = Field(None, description="e.g. 2 days, 6 hours, 30 minutes")
    severity: Literal["error", "warn"] = "error"

    @model_validator(mode="after")
    def _one_kind(self) -> Check:
        kinds = [k for k in (*_COLUMN_KINDS, "row_count") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"a check has exactly one of {', '.join((*_COLUMN_KINDS, 'row_count'))}; "
                f"this one has {', '.join(kinds) or 'none'}"
            )
        if kinds[0] != "row_count" and self.column is None:
            raise ValueError(f"{kinds[0]} checks a column: add column: <model column>")
        if kinds[0] == "row_count" and self.column is not None:
            raise ValueError("row_count checks the whole model: remove column")
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError(f"between: {list(self.between)} is empty; write [low, high]")
        if self.max_age is not None:
            max_age_seconds(self.max_age)
        return self

    @property
    def kind(self) -> str:
        return next(k for k in (*_COLUMN_KINDS, "row_count") if getattr(self, k) is not None)

    @property
    def title(self) -> str:
        """Return how the check reads in plan output: its kind, column and bound."""
        bound = getattr(self, self.kind)
        if isinstance(bound, RowCount):
            bound = ", ".join(f"{k} {v}" for k, v in bound.model_dump().items() if v is not None)
        shown = "" if bound is True else f" {list(bound) if isinstance(bound, tuple) else bound}"
        return f"{self.column + ' ' if self.column else ''}{self.kind}{shown}"


def max_age_seconds(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"max_age: {text!r} is not a duration; write e.g. 2 days, 6 hours, 30 minutes")
    return float(match.group(1)) * _SECONDS[match.group(2)]
