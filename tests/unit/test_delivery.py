"""Delivery: chunking, splitting a refused request, retries, giving up, and the shared rate budget."""

from __future__ import annotations

import threading

import pytest

from syncback.delivery import MAX_HOLDS, Delivery, RateBudget, RetryPolicy
from syncback.destinations.base import Change
from syncback.errors import DestinationAuthError, DestinationUnavailable, RateLimited
from tests.fakes.recording import RecordingDestination

NO_WAIT = RetryPolicy(attempts=3, base_s=0.0, cap_s=0.0)


def upserts(n: int) -> list[Change]:
    return [Change(f"k{i}", "upsert", f"h{i}", {"email": f"u{i}@x.io"}) for i in range(n)]


def test_changes_are_sent_in_api_sized_chunks() -> None:
    # Given a destination taking 100 a request; When 250 changes are delivered
    destination = RecordingDestination(max_batch_size=100)
    outcomes = Delivery(destination, retry=NO_WAIT).deliver(upserts(250))
    # Then three requests carried them and every one was delivered
    assert [len(r) for r in destination.requests] == [100, 100, 50]
    assert [o.status for o in outcomes].count("delivered") == 250


def test_a_request_refused_whole_is_split_until_the_bad_records_are_isolated() -> None:
    # Given a destination that refuses any request holding k13 or k77
    destination = RecordingDestination()
    destination.poison_keys = {"k13", "k77"}
    # When 100 changes are delivered
    outcomes = {o.key: o for o in Delivery(destination, retry=NO_WAIT).deliver(upserts(100))}
    # Then only those two are rejected, with the destination's reason, and the rest delivered
    rejected = {k for k, o in outcomes.items() if o.status == "rejected"}
    assert rejected == {"k13", "k77"}
    assert "VALIDATION_ERROR" in (outcomes["k13"].reason or "")
    assert len(destination.records) == 98
    # and the split took about 2·log2(100) requests, not one per record
    assert len(destination.requests) < 30


def test_transient_errors_are_retried_then_succeed() -> None:
    destination = RecordingDestination()
    destination.failures = [RateLimited("429"), DestinationUnavailable("503")]
    waits: list[float] = []
    outcomes = Delivery(destination, retry=NO_WAIT, sleep=waits.append).deliver(upserts(5))
    assert all(o.status == "delivered" for o in outcomes)
    assert len(destination.requests) == 3 and len(waits) == 2


def test_retry_after_is_honoured() -> None:
    destination = RecordingDestination()
    destination.failures = [RateLimited("429", retry_after=7.5)]
    waits: list[float] = []
    Delivery(destination, retry=RetryPolicy(attempts=2), sleep=waits.append).deliver(upserts(1))
    assert waits == [7.5]


def test_waiting_for_a_reset_the_destination_announced_spends_no_attempt() -> None:
    # Given a client that holds its request back five times (the destination said none remain
    # until its reset, while other senders kept meeting the limit), then one real 429
    destination = RecordingDestination()
    held = RateLimited("none remain until the reset", retry_after=0.4, sent=False)
    destination.failures = [held] * 5 + [RateLimited("429", retry_after=1.0)]
    waits: list[float] = []
    # When it is delivered with three attempts
    outcomes = Delivery(destination, retry=RetryPolicy(attempts=3), sleep=waits.append).deliver(upserts(2))
    # Then it waited for each reset and was delivered: only the 429 spent an attempt
    assert [o.status for o in outcomes] == ["delivered", "delivered"]
    assert waits == [0.4] * 5 + [1.0]


def test_a_request_held_back_without_end_fails_as_rate_limited() -> None:
    destination = RecordingDestination()
    destination.failures = [RateLimited("none remain", retry_after=0.0, sent=False)] * (MAX_HOLDS + 5)
    with pytest.raises(RateLimited, match="none remain"):
        Delivery(destination, retry=NO_WAIT, sleep=lambda s: None).deliver(upserts(1))
    # every hold it was allowed, then the attempts the policy gives
    assert len(destination.requests) == MAX_HOLDS + NO_WAIT.attempts


def test_a_transient_failure_that_outlasts_the_retries_stops_the_batch() -> None:
    # Given a destination answering 503 to every attempt
    destination = RecordingDestination(max_batch_size=10)
    destination.failures = [DestinationUnavailable("HubSpot answered 503")] * 3
    # When a chunk is delivered: Then the error stops it; nothing is rejected as if HubSpot had refused it
    with pytest.raises(DestinationUnavailable, match="503"):
        Delivery(destination, retry=NO_WAIT, sleep=lambda s: None).deliver(upserts(5))
    assert len(destination.requests) == 3 and destination.records == {}


def test_an_auth_failure_stops_the_delivery() -> None:
    destination = RecordingDestination()
    destination.failures = [DestinationAuthError("401")]
    with pytest.raises(DestinationAuthError):
        Delivery(destination, retry=NO_WAIT).deliver(upserts(3))
    assert len(destination.requests) == 1, "auth failures are not retried"


def test_forget_and_keep_send_nothing_and_are_skipped() -> None:
    destination = RecordingDestination()
    changes = [Change("a", "forget"), Change("b", "keep", "h"), Change("c", "archive", destination_id="9")]
    outcomes = {o.key: o for o in Delivery(destination, retry=NO_WAIT).deliver(changes)}
    assert outcomes["a"].status == outcomes["b"].status == "skipped"
    assert outcomes["c"].status == "delivered"
    assert destination.requests == [["c"]]


def test_a_missing_acknowledgement_is_a_rejection() -> None:
    class Forgetful(RecordingDestination):
        def write(self, changes, scope=""):  # type: ignore[no-untyped-def]
            return super().write(changes, scope)[1:]

    outcomes = Delivery(Forgetful(), retry=NO_WAIT).deliver(upserts(3))
    assert outcomes[0].status == "rejected" and "did not acknowledge" in (outcomes[0].reason or "")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_budget_never_lets_more_than_n_requests_into_any_window() -> None:
    # Given a budget of 10 requests per second on a fake clock
    clock = FakeClock()
    budget = RateBudget(10, 1.0, margin=0.0, clock=clock, sleep=clock.sleep)
    budget.window = 1.0  # exactly, for the arithmetic below
    # When 55 requests go through it
    starts = []
    for _ in range(55):
        budget.acquire()
        starts.append(clock.now)
    # Then no rolling window of one second holds more than 10 starts
    for i, start in enumerate(starts):
        assert sum(1 for s in starts[i:] if s < start + 1.0) <= 10
    # and it used the budget: 55 requests took a little over 5 windows
    assert 5.0 <= starts[-1] <= 5.2


def test_a_pause_holds_every_sender() -> None:
    clock = FakeClock()
    budget = RateBudget(100, 1.0, clock=clock, sleep=clock.sleep)
    budget.pause(3.0)
    budget.acquire()
    assert clock.now >= 3.0


def test_the_budget_is_shared_between_threads() -> None:
    budget = RateBudget(1000, 60.0)
    count = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal count
        for _ in range(100):
            budget.acquire()
            with lock:
                count += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count == 400 and len(budget._sent) == 400


def test_a_request_counts_from_when_its_answer_came() -> None:
    # Given a budget of 2 per second, and a request whose answer took 0.5 s
    clock = FakeClock()
    budget = RateBudget(2, 1.0, margin=0.0, clock=clock, sleep=clock.sleep)
    budget.window = 1.0
    slot = budget.acquire()
    budget.acquire()
    clock.now = 0.5
    budget.settle(slot)
    # When a third request asks: Then it waits until a second after the answer, not the start
    budget.acquire()
    assert clock.now == pytest.approx(1.0)  # the unsettled one (stamped at 0) freed the room at 1.0
    budget.acquire()
    assert clock.now == pytest.approx(1.5)  # the settled one counts from 0.5


def test_a_budget_key_never_carries_a_urls_path_or_query() -> None:
    from syncback.destinations.registry import request_budget
    from syncback.spec import SyncSpec

    sync = SyncSpec.model_validate(
        {
            "name": "s",
            "warehouse": "w",
            "table": "t",
            "primary_key": "id",
            "destination": {
                "type": "webhook",
                "url": "https://hooks.example.com/in/abc?token=s3cr3t",
                "rate_limit": {"requests": 10, "per_seconds": 1},
            },
            "mapping": {"a": "a"},
        }
    )
    budget = request_budget(sync)
    assert budget is not None
    account, _, _ = budget
    assert (
        account.startswith("webhook https://hooks.example.com/#")
        and "s3cr3t" not in account
        and "/in/" not in account
    )
