"""Delivering one batch: API-sized chunks, a shared rate budget, short retries, and a receipt.

Failures are sorted here into the receipt: a record the destination refused is rejected with its
reason; a whole request refused for its content is split in halves until the records at fault are
isolated; transient failures are retried with backoff (honouring Retry-After); if they persist, the error
stops the batch (Step Functions retries it longer, then dead-letters it; a local run stops and
plans it again next time). Authentication failures stop the run.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from syncback.destinations.base import Change, Destination, JobDestination, JobFailed, Outcome, works_in_jobs
from syncback.errors import (
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SystemicError,
    TransientError,
)

T = TypeVar("T")

Sleep = Callable[[float], object]
Clock = Callable[[], float]


class Budget(Protocol):
    """A request budget one or many deliverers share."""

    def acquire(self, interrupt: Interrupt | None = None) -> float | None:
        """Block until one more request may start, count it, and return when its slot began; None
        if ``interrupt`` was set while waiting (nothing counted)."""
        ...

    def settle(self, slot: float) -> None:
        """The request started at ``slot`` has its answer: count it from now, when it surely arrived."""
        ...

    def pause(self, seconds: float) -> None:
        """Hold every sender for ``seconds``: the destination said 429 despite the budget."""
        ...


class RateBudget:
    """At most ``requests`` request starts in any rolling window of ``per_seconds``, across threads.

    A sliding log rather than a token bucket: a bucket refilled at N per window lets 2N through in
    one window after a quiet spell, which a rolling-window limit such as HubSpot's answers with 429s.
    The API counts a request when it arrives, which may be well after we let it go (building the
    body, the GIL, a garbage collection): so each request is counted again from when its answer
    came, a time the API has surely counted it by. ``margin`` absorbs what is left.
    """

    def __init__(
        self,
        requests: int,
        per_seconds: float,
        margin: float = 0.005,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.requests = requests
        self.window = per_seconds * (1 + margin) + 0.005
        self._sent: list[float] = []  # sorted request times; at most ``requests`` of them
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def acquire(self, interrupt: Interrupt | None = None) -> float | None:
        """Block until one more request fits in the window, count it, and return that time."""
        while True:
            if interrupt is not None and interrupt.is_set:
                return None
            with self._lock:
                now = self._clock()
                expired = bisect.bisect_right(self._sent, now - self.window)
                del self._sent[:expired]
                wait = self._paused_until - now
                if wait <= 0 and len(self._sent) < self.requests:
                    self._sent.append(now)
                    return now
                if wait <= 0:
                    wait = self.window - (now - self._sent[0])
            # in short steps, so that an interrupt is seen within a quarter of a second
            self._sleep(min(max(wait, 0.001), 0.25))

    def settle(self, slot: float) -> None:
        with self._lock:
            position = bisect.bisect_left(self._sent, slot)
            if position < len(self._sent) and self._sent[position] == slot:
                del self._sent[position]
                bisect.insort(self._sent, self._clock())

    def pause(self, seconds: float) -> None:
        """Hold every sender for ``seconds``: the destination said 429 despite the budget."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: short, in-process retries of transient errors."""

    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Return how long to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.cap_s * 3)
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))


_NOT_SENT = {
    "forget": "removed from the model; this mode does not delete, so the snapshot forgets it",
    "keep": "changed in the model; mode insert writes new records only",
}


class Interrupt:
    """Tells deliveries to start nothing new: set on Ctrl-C or SIGTERM, or past a deadline (a
    Lambda's remaining time). Requests under way finish; what was not sent is undelivered."""

    def __init__(self, deadline: float | None = None, clock: Clock = time.monotonic) -> None:
        self.deadline = deadline
        self.reason = ""
        self._event = threading.Event()
        self._clock = clock

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def is_set(self) -> bool:
        if not self._event.is_set() and self.deadline is not None and self._clock() >= self.deadline:
            self.set("out of time: the rest is sent by the next run")
        return self._event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless interrupted first; return False if interrupted."""
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - self._clock()))
        self._event.wait(seconds)
        return not self.is_set


class _Interrupted(Exception):
    """Internal: the delivery was interrupted before this request was sent."""


#: how often one request may be held back until the destination's reset without spending an
#: attempt: others keep meeting the limit meanwhile, but not for ever
MAX_HOLDS = 100

#: a job that ended without its work, or had not finished after ``JOB_TIMEOUT_S``, is submitted
#: again: this many submissions in all, then the batch fails (transient: retried, dead-lettered)
JOB_ATTEMPTS, JOB_TIMEOUT_S = 3, 1800.0

#: a job under way, as the delivery keeps it between passes: its id, the keys of its changes,
#: which submission of those changes it is, and when (epoch seconds) it was submitted
Job = dict[str, Any]

#: a request refused whole, split, whose parts are all refused the same way this many levels in a
#: row (halves, then quarters: 7 requests) is refused for a reason no record caused
SYSTEMIC_LEVELS = 2


class JobBatch:
    """A batch as passes over its jobs see it: its changes not answered yet, its jobs under way
    (``save`` keeps them, so a later pass submits nothing twice), where its outcomes go."""

    def __init__(
        self,
        scope: str,
        changes: Sequence[Change],
        jobs: list[Job],
        save: Callable[[list[Job]], None],
        on_outcomes: Callable[[list[Outcome]], None],
    ) -> None:
        self.scope = scope
        self.by_key = {c.key: c for c in changes}
        self.jobs = jobs
        self.save = save
        self.attempts: dict[str, int] = {}  # keys to submit again, and which submission that is
        self.report = on_outcomes

    def answer(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.by_key.pop(key, None)

    def skip_not_sent(self) -> list[Outcome]:
        """Answer the changes this mode does not send (``_NOT_SENT``); return their outcomes."""
        skipped = [
            Outcome(c.key, "skipped", reason=_NOT_SENT[c.action])
            for c in self.by_key.values()
            if c.action in _NOT_SENT
        ]
        if skipped:
            self.report(skipped)
            self.answer([o.key for o in skipped])
        return skipped

    def unsubmitted(self) -> list[Change]:
        held = {k for job in self.jobs for k in job["keys"]}
        return [c for c in self.by_key.values() if c.key not in held]

    @property
    def done(self) -> bool:
        return not self.by_key and not self.jobs


class Delivery:
    """Delivers changes through one destination, sharing one rate budget."""

    def __init__(
        self,
        destination: Destination | JobDestination,
        budget: Budget | None = None,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Sleep | None = None,
        on_progress: Callable[[int], None] | None = None,
        on_outcomes: Callable[[list[Outcome]], None] | None = None,
        interrupt: Interrupt | None = None,
    ) -> None:
        self.destination = destination
        self.budget = budget
        self.retry = retry
        self.interrupt = interrupt or Interrupt()
        # waits between retries end early when interrupted
        self._sleep: Sleep = sleep or self.interrupt.sleep
        self._on_progress = on_progress or (lambda n: None)
        self._on_outcomes = on_outcomes or (lambda outcomes: None)

    def deliver(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        """Return one outcome per change; raise the errors that stop the batch.

        Those are the destination refusing our credentials (or a 410), a request refused for a
        reason no record caused (SystemicError), and a transient failure that outlasted the
        retries: a destination that is down has not rejected anything, so its records are not dead
        letters; they stay undelivered and are planned again. When interrupted, the changes not
        sent come back ``undelivered``.
        """
        if works_in_jobs(self.destination):
            return self._deliver_in_jobs(changes, scope)
        outcomes = [
            Outcome(c.key, "skipped", reason=_NOT_SENT[c.action]) for c in changes if c.action in _NOT_SENT
        ]
        self._on_outcomes(outcomes)
        self._on_progress(len(outcomes))
        size = self.destination.max_batch_size
        for todo in _requests(changes):
            for start in range(0, len(todo), size):
                chunk = todo[start : start + size]
                sent = self._send(chunk, scope)
                self._on_outcomes([o for o in sent if o.status != "undelivered"])
                outcomes += sent
                self._on_progress(len(chunk))
        return outcomes

    def _deliver_in_jobs(self, changes: Sequence[Change], scope: str) -> list[Outcome]:
        """Deliver through a destination that works in jobs, keeping the jobs under way in memory
        (a batch keeps them in its store: see the runner)."""
        got: dict[str, Outcome] = {}

        def collect(outcomes: list[Outcome]) -> None:
            got.update((o.key, o) for o in outcomes)
            self._on_outcomes(outcomes)

        self.run_jobs(JobBatch(scope, changes, [], lambda _: None, collect), wait=True)
        return [
            got.get(c.key) or Outcome(c.key, "undelivered", reason=self.interrupt.reason) for c in changes
        ]

    def run_jobs(self, batch: JobBatch, wait: bool, allowed: int | None = None) -> float | None:
        """Take passes (``advance_jobs``) over one batch, sleeping between them when ``wait``, until
        no job is under way or the delivery is interrupted (return None); without ``wait``, return
        after one pass that leaves jobs under way, with the seconds to wait before the next.
        Interrupted, the jobs under way are given up: their records stay undelivered and are sent
        again (job destinations write by identifier: twice is harmless). ``allowed``: this batch's
        share of the destination's ``max_jobs``."""
        client = self.destination
        assert works_in_jobs(client), "a destination that writes at once is delivered by deliver"
        while True:
            self.advance_jobs([batch], allowed=allowed)
            batch.save(batch.jobs)
            if not batch.jobs or self.interrupt.is_set:
                return None
            if not wait:
                return client.poll_s
            self.interrupt.sleep(client.poll_s)

    def advance_jobs(
        self,
        batches: list[JobBatch],
        more: Callable[[], JobBatch | None] | None = None,
        allowed: int | None = None,
        workers: int = 1,
    ) -> None:
        """Take one pass over the jobs of ``batches``; each batch's ``jobs`` are then those still
        under way.

        The jobs of every batch are polled once, together (one request where the API allows): the
        outcomes of those done are reported (to the batch's ``on_outcomes``); those that failed, or
        have not finished after ``JOB_TIMEOUT_S``, are submitted again (``JOB_ATTEMPTS``
        submissions in all, then DestinationUnavailable stops the delivery).
        Then the changes no job holds are submitted, batch by batch, while the destination takes
        more jobs (``allowed``, else ``max_jobs``, across all batches) and the delivery is not interrupted; when every
        batch has all its changes under way, ``more`` may give one more batch (appended to
        ``batches``); ``workers`` submissions are under way at once (a request takes a while, and
        the rate limit allows several). ``save`` is called after each submission, so that a pass
        cut off never submits the same changes twice. A request refused whole is refused for a reason no record
        caused (the job reports records one by one): SystemicError.
        """
        client = self.destination
        assert works_in_jobs(client), "a destination that writes at once is delivered by deliver"
        polled = [
            (batch, job, [batch.by_key[k] for k in job["keys"] if k in batch.by_key])
            for batch in batches
            for job in batch.jobs
        ]
        try:
            states = (
                self._with_retries(client.results, [(job["id"], chunk) for _, job, chunk in polled])
                if polled
                else []
            )
        except _Interrupted:
            return
        for batch in batches:
            batch.jobs = []
        for (batch, job, chunk), done in zip(polled, states, strict=True):
            late = done is None and time.time() - job["at"] > JOB_TIMEOUT_S
            if isinstance(done, JobFailed) or late:
                if job["attempt"] >= JOB_ATTEMPTS:
                    why = (
                        done if isinstance(done, JobFailed) else f"it has not finished in {JOB_TIMEOUT_S:g}s"
                    )
                    raise DestinationUnavailable(
                        f"job {job['id']}: {why}; {job['attempt'] - 1} submissions of its records before it fared no better"
                    )
                batch.attempts.update((k, job["attempt"] + 1) for k in job["keys"])
            elif done is None:
                batch.jobs.append(job)
            else:
                outcomes, again = _gone(chunk, _one_per_change(chunk, done))
                batch.by_key.update((c.key, c) for c in again)  # submitted again, by identifier
                batch.report(outcomes)
                self._on_progress(len(outcomes))
                batch.answer([o.key for o in outcomes])
        for batch in batches:
            skipped = batch.skip_not_sent()
            self._on_progress(len(skipped))
        room = (allowed or client.max_jobs) - sum(len(batch.jobs) for batch in batches)
        chunks: list[tuple[JobBatch, list[Change]]] = []
        index = 0
        while len(chunks) < room and not self.interrupt.is_set:
            if index == len(batches):
                extra = more() if more is not None else None
                if extra is None:
                    break
                batches.append(extra)
            batch = batches[index]
            for todo in _requests(batch.unsubmitted()):
                for start in range(0, len(todo), client.max_batch_size):
                    chunks.append((batch, todo[start : start + client.max_batch_size]))
            index += 1
        self._submit(chunks[: max(room, 0)], workers)

    def _submit(self, chunks: list[tuple[JobBatch, list[Change]]], workers: int) -> None:
        """Submit each chunk as one job of its batch, ``workers`` at a time, until interrupted."""
        client = self.destination
        assert works_in_jobs(client)
        lock, failed = threading.Lock(), threading.Event()

        def one(batch: JobBatch, chunk: list[Change]) -> None:
            if self.interrupt.is_set or failed.is_set():  # after an error, submit no more
                return
            try:
                job_id = self._with_retries(client.submit, chunk, batch.scope)
            except _Interrupted:
                return
            except RequestRejected as exc:
                failed.set()
                raise SystemicError(
                    f"{exc}; the job request was refused whole, for a reason no record caused", "destination"
                ) from exc
            except BaseException:
                failed.set()
                raise
            attempt = batch.attempts.get(chunk[0].key, 1)
            with lock:
                batch.jobs.append(
                    {"id": job_id, "keys": [c.key for c in chunk], "attempt": attempt, "at": time.time()}
                )
                batch.save(batch.jobs)

        if workers <= 1 or len(chunks) <= 1:
            for batch, chunk in chunks:
                one(batch, chunk)
            return
        with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            done = [pool.submit(one, batch, chunk) for batch, chunk in chunks]
        for future in done:
            future.result()  # the first error a submission raised, once all have ended

    def _undelivered(self, chunk: Sequence[Change]) -> list[Outcome]:
        return [Outcome(c.key, "undelivered", reason=self.interrupt.reason) for c in chunk]

    def _send(self, chunk: Sequence[Change], scope: str) -> list[Outcome]:
        try:
            outcomes = _one_per_change(chunk, self._with_retries(self._write, chunk, scope))
        except _Interrupted:
            return self._undelivered(chunk)
        except RequestRejected as exc:
            return self._split(chunk, scope, exc)
        outcomes, again = _gone(chunk, outcomes)
        return outcomes + (self._send(again, scope) if again else [])

    def _split(self, chunk: Sequence[Change], scope: str, refused: RequestRejected) -> list[Outcome]:
        """Find the records a refused request holds at fault, level by level of halves; raise
        SystemicError when every part is refused the same way ``SYSTEMIC_LEVELS`` levels in a row."""
        found: dict[str, Outcome] = {}
        level: list[tuple[Sequence[Change], RequestRejected]] = [(chunk, refused)]
        uniform = 0
        while level:
            refusals: list[str | None] = []
            below: list[tuple[Sequence[Change], RequestRejected]] = []
            for part, error in level:
                if len(part) == 1:
                    found[part[0].key] = Outcome(part[0].key, "rejected", reason=str(error))
                    continue
                middle = len(part) // 2
                for half in (part[:middle], part[middle:]):
                    try:
                        found.update(
                            (o.key, o)
                            for o in _one_per_change(half, self._with_retries(self._write, half, scope))
                        )
                        refusals.append(None)
                    except _Interrupted:
                        found.update((o.key, o) for o in self._undelivered(half))
                        refusals.append(None)
                    except RequestRejected as exc:
                        below.append((half, exc))
                        refusals.append(str(exc))
            uniform = uniform + 1 if refusals and all(r == str(refused) for r in refusals) else 0
            if uniform >= SYSTEMIC_LEVELS:
                raise SystemicError(
                    f"{refused}; every part of the request is refused the same way, so no record is at fault",
                    "destination",
                )
            level = below
        return [found[c.key] for c in chunk]

    def _write(self, chunk: Sequence[Change], scope: str) -> list[Outcome]:
        client = self.destination
        assert not works_in_jobs(client), "a destination that works in jobs is delivered by advance_jobs"
        return client.write(chunk, scope)

    def _with_retries(self, call: Callable[..., T], *args: Any) -> T:
        """Return ``call(*args)``, retrying transient errors; raise _Interrupted when interrupted first.
        A request the client held back until the destination's reset (``RateLimited.sent`` False)
        waits without spending an attempt, up to ``MAX_HOLDS`` times."""
        attempt, holds = 1, 0
        while True:
            slot: float | None = None
            try:
                # waiting for the budget is part of the attempt: a budget that fails is retried too
                if self.budget is not None:
                    slot = self.budget.acquire(self.interrupt)
                if self.interrupt.is_set:
                    raise _Interrupted
                return call(*args)
            except TransientError as exc:
                held = isinstance(exc, RateLimited) and not exc.sent and holds < MAX_HOLDS
                if attempt == self.retry.attempts and not held:
                    raise
                failure = exc
            finally:
                if self.budget is not None and slot is not None:
                    self.budget.settle(slot)
            wait = self.retry.delay(attempt, failure.retry_after)
            if held:
                holds += 1
            else:
                attempt += 1
            if isinstance(failure, RateLimited) and self.budget is not None:
                self.budget.pause(wait)
            self._sleep(wait)
            if self.interrupt.is_set:
                raise _Interrupted


def _requests(changes: Sequence[Change]) -> list[list[Change]]:
    """Return the changes to send, grouped so that each request does one thing: write by the
    destination's id, write by the identifier, or archive; in the order they came."""
    groups: dict[tuple[str, bool], list[Change]] = {}
    for change in changes:
        if change.action in _NOT_SENT:
            continue
        kind = "archive" if change.action == "archive" else "write"
        groups.setdefault((kind, change.destination_id is not None), []).append(change)
    return list(groups.values())


def _gone(chunk: Sequence[Change], outcomes: list[Outcome]) -> tuple[list[Outcome], list[Change]]:
    """Split off the outcomes ``gone`` (a write by id found no record): return the other outcomes,
    and the upserts to write again by identifier, without the dead id. A change with nothing left to
    write (clear, release, archive) is skipped: its record is not there."""
    gone = {o.key for o in outcomes if o.status == "gone"}
    again = [
        dataclasses.replace(c, destination_id=None)
        for c in chunk
        if c.key in gone and c.action == "upsert" and c.destination_id is not None
    ]
    resent = {c.key for c in again}
    kept = [
        Outcome(o.key, "skipped", reason=o.reason or "no longer in the destination; nothing to do")
        if o.status == "gone"
        else o
        for o in outcomes
        if o.key not in resent
    ]
    return kept, again


def _one_per_change(chunk: Sequence[Change], outcomes: list[Outcome]) -> list[Outcome]:
    by_key = {o.key: o for o in outcomes}
    return [
        by_key.get(c.key)
        or Outcome(c.key, "rejected", reason="the destination did not acknowledge this record")
        for c in chunk
    ]


def outcome_to_json(o: Outcome, change: Change | None = None) -> list[Any]:
    """Return an outcome as the compact array receipts store: with what was asked (``change``'s
    action, row hash and identity), so that a commit needs no batch file to apply it."""
    done = [o.key, o.status, o.destination_id, o.reason, o.created]
    return done if change is None else [*done, change.action, change.row_hash, change.identity]


def outcome_from_json(item: list[Any]) -> Outcome:
    key, status, destination_id, reason, *rest = item
    return Outcome(key, status, destination_id, reason, rest[0] if rest else None)


def receipt(
    batch: str, outcomes: Sequence[Outcome], changes: Sequence[Change], error: str | None = None
) -> dict[str, Any]:
    """Return the receipt document of a delivered batch; ``error``: what stopped its delivery."""
    by_key = {c.key: c for c in changes}
    document: dict[str, Any] = {
        "batch": batch,
        "outcomes": [outcome_to_json(o, by_key.get(o.key)) for o in outcomes],
    }
    if error is not None:
        document["error"] = error
    return document


def outcomes_from_receipt(document: dict[str, Any]) -> list[Outcome]:
    return [outcome_from_json(item) for item in document["outcomes"]]
