"""The DynamoDB rate budget: concurrent deliverers together stay under the limit and use most of it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from syncback.shared_budget import DynamoRateBudget

TABLE = "syncback-budgets"


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-west-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "budget", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "budget", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client


class Atomic:
    """A DynamoDB client whose calls run one at a time. DynamoDB checks a condition and writes as one
    step; moto, serving threads in one process, checks and writes in two, so on a busy machine two
    conditional writes that saw the same value could both pass, which DynamoDB never lets happen."""

    def __init__(self, client: Any, lock: threading.Lock) -> None:
        self._client = client
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._client, name)

        def atomic(**kwargs: Any) -> Any:
            with self._lock:
                return call(**kwargs)

        return atomic


def test_four_deliverers_share_one_budget_and_use_all_of_it(dynamodb: Any) -> None:
    # Given four deliverers (as four Lambdas would), each with its own client object, one budget,
    # and a clock that stands still (so that how fast a busy machine wakes threads plays no part)
    starts: list[float] = []
    lock = threading.Lock()
    service = threading.Lock()

    def deliverer() -> None:
        budget = DynamoRateBudget(
            TABLE,
            "hubspot-app",
            20,
            1.0,
            Atomic(dynamodb, service),
            margin=0.0,
            clock=lambda: 1000.0,
            sleep=lambda _: None,
        )
        for _ in range(15):
            slot = budget.acquire()
            with lock:
                starts.append(slot)

    # When they race to send 60 requests against 20 per second
    threads = [threading.Thread(target=deliverer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then they were given 60 distinct slots one emission interval apart, with no gap: no rolling
    # second holds more than 21 starts, and the 60 requests take 3 s of the schedule, all of it
    starts.sort()
    assert starts == pytest.approx([1000.0 + k * 0.05 for k in range(60)])
    busiest = max(sum(1 for s in starts[i:] if s < start + 1.0) for i, start in enumerate(starts))
    assert busiest <= 21


def test_a_pause_holds_every_holder_of_the_budget(dynamodb: Any) -> None:
    clock = [1000.0]
    sleeps: list[float] = []
    first = DynamoRateBudget(
        TABLE, "b", 10, 1.0, dynamodb, margin=0.0, clock=lambda: clock[0], sleep=sleeps.append
    )
    other = DynamoRateBudget(
        TABLE, "b", 10, 1.0, dynamodb, margin=0.0, clock=lambda: clock[0], sleep=sleeps.append
    )
    first.pause(5.0)
    other.acquire()
    assert sleeps == [pytest.approx(5.0)]


def test_separate_budgets_do_not_wait_for_each_other(dynamodb: Any) -> None:
    clock = [0.0]
    sleeps: list[float] = []
    for name in ("a", "b", "c"):
        DynamoRateBudget(
            TABLE, name, 1, 10.0, dynamodb, clock=lambda: clock[0], sleep=sleeps.append
        ).acquire()
    assert sleeps == []


def test_a_run_through_the_shared_budget_meets_no_429(
    dynamodb: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:

    from syncback.batches import LocalBatchStore
    from syncback.runner import Runtime, run_sync
    from syncback.sandbox.hubspot import HubSpotSandbox
    from syncback.spec import load_project
    from syncback.state import LocalStateStore
    from tests.conftest import BASE_SYNC, contacts_rows, write_project

    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    with HubSpotSandbox(token="t", requests_per_window=20, window_seconds=1.0) as sandbox:
        # Given a sandbox enforcing 20 requests per rolling second, and a spec saying so
        destination = {
            **BASE_SYNC["destination"],
            "base_url": sandbox.url,
            "concurrency": 4,
            "rate_limit": {"requests": 20, "per_seconds": 1.0},
        }
        write_project(
            tmp_path, {**BASE_SYNC, "destination": destination, "batch_size": 500}, contacts_rows(5_000)
        )
        project = load_project(tmp_path)
        rt = Runtime(
            project,
            LocalBatchStore(project.state_path),
            LocalStateStore(project.state_path),
            # a 1 s window is short: give the schedule room for the scheduling jitter of a busy CI box
            budget_factory=lambda name, n, per: DynamoRateBudget(TABLE, name, n, per, dynamodb, margin=0.25),
        )
        # When four deliverers send 50 requests through the DynamoDB budget
        record = run_sync(rt, "contacts")
        # Then everything was delivered without a single 429
        assert record.delivered == 5_000
        assert sandbox.stats()["rate_limited"] == 0
