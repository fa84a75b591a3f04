"""An in-memory destination for unit tests: records what it was sent, fails as scripted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from syncback.destinations.base import Change, Outcome


class RecordingDestination:
    """Accepts everything except what it is told to refuse.

    ``reject_keys``: rejected per record (like a 207); ``poison_keys``: any request holding one is
    refused whole with ``RequestRejected`` (like a 400 for the batch); ``failures``: exceptions
    raised by the next calls, in order, before anything is stored.
    """

    def __init__(self, max_batch_size: int = 100) -> None:
        self.max_batch_size = max_batch_size
        self.records: dict[str, dict[str, Any]] = {}
        self.requests: list[list[str]] = []
        self.reject_keys: set[str] = set()
        self.poison_keys: set[str] = set()
        self.failures: list[Exception] = []
        self.closed = False

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        from syncback.errors import RequestRejected

        self.requests.append([c.key for c in changes])
        if self.failures:
            raise self.failures.pop(0)
        if any(c.key in self.poison_keys for c in changes):
            raise RequestRejected("400 VALIDATION_ERROR: one input is not valid")
        outcomes = []
        for change in changes:
            if change.key in self.reject_keys:
                outcomes.append(Outcome(change.key, "rejected", reason="VALIDATION_ERROR: not valid"))
            elif change.action == "archive":
                self.records.pop(change.key, None)
                outcomes.append(Outcome(change.key, "delivered", change.destination_id))
            else:
                created = change.key not in self.records
                self.records[change.key] = dict(change.record)
                outcomes.append(Outcome(change.key, "delivered", f"id-{change.key}", created=created))
        return outcomes

    def close(self) -> None:
        self.closed = True


class RecordingJobs(RecordingDestination):
    """The same, working in jobs: ``submit`` queues a job, which is done after ``polls`` polls;
    ``results`` polls every job under way in one request.

    ``fail_jobs``: the next jobs (by submission) end failed without doing their work; ``running``
    counts the jobs submitted and not yet polled done, ``most_running`` its peak.
    """

    def __init__(self, max_batch_size: int = 100, max_jobs: int = 3, polls: int = 2) -> None:
        super().__init__(max_batch_size)
        self.max_jobs = max_jobs
        self.poll_s = 0.0
        self.polls = polls
        self.fail_jobs = 0
        self.jobs: dict[str, dict[str, Any]] = {}
        self.running = self.most_running = 0
        self.polls_sent = 0  # requests that polled jobs

    def submit(self, changes: Sequence[Change], scope: str = "") -> str:
        from syncback.errors import RequestRejected

        self.requests.append([c.key for c in changes])
        if self.failures:
            raise self.failures.pop(0)
        if any(c.key in self.poison_keys for c in changes):
            raise RequestRejected("400 InvalidValue: the job request is not valid")
        failed = self.fail_jobs > 0
        self.fail_jobs -= failed
        job = f"job-{len(self.jobs) + 1}"
        self.jobs[job] = {"left": self.polls, "failed": failed, "keys": [c.key for c in changes]}
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        return job

    def results(self, jobs: Sequence[tuple[str, Sequence[Change]]]) -> list[Any]:
        from syncback.destinations.base import JobFailed

        self.polls_sent += 1
        out: list[Any] = []
        for job, changes in jobs:
            state = self.jobs[job]
            state["left"] -= 1
            if state["left"] > 0:
                out.append(None)
                continue
            self.running -= 1
            if state["failed"]:
                out.append(JobFailed(f"{job} failed"))
                continue
            assert [c.key for c in changes] == state["keys"], "polled with other changes than submitted"
            out.append(super().write(changes))
        return out
