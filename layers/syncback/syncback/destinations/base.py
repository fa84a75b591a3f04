"""The Destination protocol: what every destination API client offers the delivery.

A destination turns a slice of planned changes into one API request and says, per record,
what became of it. It classifies its own HTTP responses in one place:

- the whole request failed for a reason that may pass: raise a ``TransientError``
  (``RateLimited`` with ``retry_after`` when the API said how long to wait);
- our credentials were refused: raise ``DestinationAuthError`` (the run stops);
- the whole request was refused because of its content (a 400 for the batch): raise
  ``RequestRejected``; the delivery splits the slice to find the records at fault;
- otherwise return one ``Outcome`` per change: delivered (with the destination's id, and
  whether the destination created the record), rejected (with the destination's reason) or
  skipped (with why nothing was sent).

A change with a ``destination_id`` names a record the destination already holds: it is written by
that id (an identifier that changed, a customer's new email, then moves with the record); a
change without one is written by its identifier (upsert), which finds or creates the record.

A destination whose API works in jobs (submit a request, the vendor works on it in the background,
poll until it is done, then read one result per record) is a ``JobDestination``: ``submit`` sends a
slice and returns the job's id, ``results`` returns the outcomes once the job is done. The delivery
turns both kinds into the same receipt; see ``syncback.jobs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from typing_extensions import TypeIs

#: upsert: write the record (the sync's mode says create, update or upsert); archive: delete it;
#: clear: empty the fields this sync maps (mirror, a record this sync did not create); release:
#: empty the record's identifier, so that another record may take it in the run's second phase;
#: forget / keep: send nothing (removed from the model without mirror; changed in insert mode)
Action = Literal["upsert", "archive", "clear", "release", "forget", "keep"]
#: the actions that write fields of an existing or new record
WRITES = ("upsert", "clear", "release")
#: undelivered: the delivery stopped before sending it (the next run plans it again); gone: a write
#: by the destination's id found no record (someone deleted it there): the delivery writes it again
#: by its identifier, so no receipt ever holds this status
Status = Literal["delivered", "rejected", "skipped", "undelivered", "gone"]


@dataclass(frozen=True, slots=True)
class Change:
    """One planned change: the record to write (mapped fields only), or a key to archive."""

    key: str
    action: Action
    row_hash: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    destination_id: str | None = None
    identity: str | None = None  # the identifier, normalised: what the snapshot remembers


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the destination did with one change."""

    key: str
    status: Status
    destination_id: str | None = None
    reason: str | None = None
    #: the destination created the record; None: it did not say, as a write by the record's id
    #: does not (the record is the one the change named, whose ``created`` the snapshot keeps)
    created: bool | None = None


class Destination(Protocol):
    """A client for one destination API, configured for one sync."""

    #: the most records one API request may carry
    max_batch_size: int

    def write(self, changes: Sequence[Change], scope: str) -> list[Outcome]:
        """Send ``changes`` (at most ``max_batch_size``, one action) in one request; one outcome each.

        ``scope`` names this delivery (the batch and its run): the same on every retry of the same
        changes, different in every other run, for destinations that deduplicate requests by id.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class JobFailed(Exception):
    """The destination says a job ended without doing its work (failed, killed, or forgotten):
    its records are submitted again."""


class JobDestination(Protocol):
    """A client for a destination API that works in jobs, configured for one sync."""

    #: the most records one job may carry
    max_batch_size: int
    #: the most jobs of this sync that may be queued or running at once, across all its batches
    #: (batches delivered side by side each take an equal share)
    max_jobs: int
    #: seconds between two polls of a running job
    poll_s: float

    def submit(self, changes: Sequence[Change], scope: str) -> str:
        """Submit ``changes`` (at most ``max_batch_size``, one action) as one job; return its id.
        Raises as ``Destination.write`` does."""
        ...

    def results(self, jobs: Sequence[tuple[str, Sequence[Change]]]) -> list[list[Outcome] | JobFailed | None]:
        """Poll ``jobs`` (each its id and the changes submitted with it), in one request where the
        API allows; return for each, in order, one outcome per change once it is done, None while
        it is queued or running, or a JobFailed when it ended without doing its work."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def works_in_jobs(client: Destination | JobDestination) -> TypeIs[JobDestination]:
    """Whether ``client`` is delivered in jobs (submit, poll, results) rather than by ``write``."""
    return hasattr(client, "submit")
