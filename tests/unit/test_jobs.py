"""Delivering through a destination that works in jobs: submit, poll, read results; one receipt."""

from __future__ import annotations

import pytest

import syncback.delivery as delivery_module
from syncback.delivery import JOB_ATTEMPTS, Delivery, Interrupt, JobBatch, RetryPolicy
from syncback.destinations.base import Change
from syncback.errors import DestinationUnavailable, SystemicError
from tests.fakes.recording import RecordingJobs

NO_WAIT = RetryPolicy(attempts=2, base_s=0, cap_s=0)


def upserts(n: int) -> list[Change]:
    return [Change(str(i), "upsert", f"h{i}", {"email": f"u{i}@example.com"}) for i in range(n)]


def test_jobs_are_submitted_polled_and_read_into_one_outcome_per_change() -> None:
    jobs = RecordingJobs(max_batch_size=10, max_jobs=3, polls=2)
    jobs.reject_keys = {"7"}
    outcomes = Delivery(jobs, retry=NO_WAIT).deliver(upserts(45))
    assert [o.key for o in outcomes] == [str(i) for i in range(45)]
    assert {o.key for o in outcomes if o.status == "rejected"} == {"7"}
    assert sum(o.status == "delivered" for o in outcomes) == 44 and len(jobs.records) == 44
    # five jobs of at most ten, never more than three at once
    assert len(jobs.jobs) == 5 and jobs.most_running == 3
    # each pass polls every job under way in one request: 3, 3 (done; 2 more submitted), 2, 2
    assert jobs.polls_sent == 4


def test_a_failed_job_is_submitted_again_then_the_batch_fails() -> None:
    jobs = RecordingJobs(max_batch_size=10, polls=1)
    jobs.fail_jobs = 1
    outcomes = Delivery(jobs, retry=NO_WAIT).deliver(upserts(10))
    assert {o.status for o in outcomes} == {"delivered"} and len(jobs.jobs) == 2

    always = RecordingJobs(max_batch_size=10, polls=1)
    always.fail_jobs = JOB_ATTEMPTS
    with pytest.raises(DestinationUnavailable, match="failed"):
        Delivery(always, retry=NO_WAIT).deliver(upserts(10))
    assert len(always.jobs) == JOB_ATTEMPTS


def test_a_job_that_never_finishes_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery_module, "JOB_TIMEOUT_S", -1.0)  # every job is late at once
    jobs = RecordingJobs(max_batch_size=10, polls=10**6)
    with pytest.raises(DestinationUnavailable, match="has not finished"):
        Delivery(jobs, retry=NO_WAIT).deliver(upserts(5))
    assert len(jobs.jobs) == JOB_ATTEMPTS


def test_a_job_request_refused_whole_stops_the_run_as_systemic() -> None:
    jobs = RecordingJobs(max_batch_size=10)
    jobs.poison_keys = {"3"}
    with pytest.raises(SystemicError, match="refused whole"):
        Delivery(jobs, retry=NO_WAIT).deliver(upserts(5))


def test_interrupted_jobs_leave_their_records_undelivered() -> None:
    jobs = RecordingJobs(max_batch_size=10, max_jobs=1, polls=1)
    interrupt = Interrupt()
    delivery = Delivery(jobs, retry=NO_WAIT, interrupt=interrupt)
    real_submit = jobs.submit

    def submit_then_stop(changes: list[Change], scope: str = "") -> str:
        interrupt.set("Ctrl-C")
        return real_submit(changes, scope)

    jobs.submit = submit_then_stop  # type: ignore[method-assign]
    outcomes = delivery.deliver(upserts(20))
    assert {o.status for o in outcomes} == {"undelivered"}
    assert all(o.reason == "Ctrl-C" for o in outcomes) and len(jobs.jobs) == 1


def test_submissions_side_by_side_stop_at_the_first_refused_whole() -> None:
    # Given a pool of jobs submitting four at once, where one job request is refused whole
    jobs = RecordingJobs(max_batch_size=10, max_jobs=10, polls=1)
    jobs.poison_keys = {"25"}
    batch = JobBatch("b", upserts(100), [], lambda _: None, lambda outcomes: None)
    # When a pass submits: Then the run stops as systemic, and no job holds the refused request
    with pytest.raises(SystemicError, match="refused whole"):
        Delivery(jobs, retry=NO_WAIT).advance_jobs([batch], workers=4)
    assert len(batch.jobs) == len(jobs.jobs) and all("25" not in job["keys"] for job in batch.jobs)
