"""The Destination protocol: what every destination API client offers the delivery.

A destination turns a slice of planned changes into one API request and says, per record,
what became of it. It classifies its own HTTP responses in one place:

- the whole request failed for a reason that may pass: raise a ``TransientError``
  (``RateLimited`` with ``retry_after`` when the API said how long to wait);
- our credentials were refused: raise ``DestinationAuthError`` (the run stops);
- the whole request was refused because of its content (a 400 for the batch): raise
  ``RequestRejected``; the delivery splits the slice to find the records at fault;
- otherwise return one ``Outcome`` per change: delivered (with the destination's id),
  rejected (with the destination's reason) or skipped (with why nothing was sent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

#: upsert: write the record (the sync's mode says create, update or upsert); archive: delete it;
#: forget / keep: send nothing (removed from the model without mirror; changed in insert mode)
Action = Literal["upsert", "archive", "forget", "keep"]
Status = Literal["delivered", "rejected", "skipped"]


@dataclass(frozen=True, slots=True)
class Change:
    """One planned change: the record to write (mapped fields only), or a key to archive."""

    key: str
    action: Action
    row_hash: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    destination_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the destination did with one change."""

    key: str
    status: Status
    destination_id: str | None = None
    reason: str | None = None


class Destination(Protocol):
    """A client for one destination API, configured for one sync."""

    #: the most records one API request may carry
    max_batch_size: int

    def write(self, changes: Sequence[Change]) -> list[Outcome]:
        """Send ``changes`` (at most ``max_batch_size``) in one request; one outcome per change."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
