"""The parts spec files are made of, shared by the sync spec and every destination's config."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

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
