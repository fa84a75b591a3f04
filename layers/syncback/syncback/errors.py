"""The errors syncback raises, grouped by what the caller should do about them.

    SyncbackError
    ├── TransientError            retry later: the same request may succeed
    │   ├── RateLimited           429 (and HubSpot's 423): wait, then retry; carries retry_after
    │   ├── DestinationUnavailable 5xx, timeouts, connection resets
    │   └── WarehouseUnavailable  the warehouse could not be reached
    └── PermanentError            do not retry: a person has to change something
        ├── ConfigError           a spec or project file is wrong (carries file: field: message lines)
        ├── SecretError           a secret reference could not be resolved
        ├── ModelError            the model's SQL failed or its columns do not fit the mapping
        ├── GuardError            the plan breaks a safety guard (mirror deletes) and was stopped
        ├── RunInProgress         another run of the same sync holds the lock
        ├── DestinationAuthError  401/403: the token is wrong or lacks a scope
        ├── DestinationGone       410: the receiver asked us to stop sending
        ├── SystemicError         a request refused for a reason no record caused (a wrong object
        │                         type, a property that does not exist, a 404 URL): the run stops,
        │                         no record is blamed; ``field`` names the spec field to fix
        └── RequestRejected       the destination refused a whole request (400/409); the
                                  delivery splits the batch to isolate the records at fault

``RunCancelled`` is not an error of the destination: the operator stopped the run (Ctrl-C,
SIGTERM) or its time ran out; what was delivered is committed and the rest planned again.

The Step Functions definition matches these class names in ``ErrorEquals`` (it does not match base
classes), so a Lambda handler re-raises as exactly one of them. Per-record rejections are not
exceptions: they are data in the receipt.
"""

from __future__ import annotations

from dataclasses import dataclass


class SyncbackError(Exception):
    """The root of every error syncback raises on purpose."""


class TransientError(SyncbackError):
    """A failure that may go away by itself: retry with backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """The destination asked us to slow down (429, or HubSpot's 423 lock). ``sent`` is False when
    the client held the request back because the destination had said none remain until its reset:
    waiting for that reset is no failed attempt."""

    def __init__(self, message: str, retry_after: float | None = None, *, sent: bool = True) -> None:
        super().__init__(message, retry_after)
        self.sent = sent


class DestinationUnavailable(TransientError):
    """The destination answered 5xx, timed out or reset the connection."""


class WarehouseUnavailable(TransientError):
    """The warehouse could not be reached or timed out."""


class PermanentError(SyncbackError):
    """A failure that retrying will not fix."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a project file: where, which field, and what to do."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


class ConfigError(PermanentError):
    """One or more project files are invalid; ``problems`` lists each one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SecretError(PermanentError):
    """A ``env:`` or ``secret:`` reference could not be resolved."""


class ModelError(PermanentError):
    """The model's SQL failed, or it lacks a column the mapping needs."""


class GuardError(PermanentError):
    """The plan would break a guard (for instance delete too much) and was stopped."""


class RunInProgress(PermanentError):
    """Another run of this sync is still going; runs of one sync never overlap."""


class DestinationAuthError(PermanentError):
    """The destination refused our credentials (401/403)."""


class DestinationGone(PermanentError):
    """The destination answered 410 Gone: it no longer wants what this sync sends."""


class RequestRejected(PermanentError):
    """The destination refused a whole request because of what it contained (400/409)."""


class SystemicError(PermanentError):
    """A request refused for a reason no record caused; ``field`` is the spec field to fix."""

    def __init__(self, message: str, field: str = "destination") -> None:
        super().__init__(f"{message} (fix {field} in the sync spec)")
        self.field = field


class RunCancelled(SyncbackError):
    """The run was stopped before it finished (Ctrl-C, SIGTERM, a deadline)."""
