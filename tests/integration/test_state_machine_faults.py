"""Under the faults real APIs create, the deployed state machine loses nothing and duplicates nothing.

The fault suite of ``test_faults`` (10% 429s, 5% 5xx, 1% timeouts or connection resets, 2% of the
records rejected), run through the real ASL in moto instead of the local runner: Plan, a
Distributed Map of concurrent Deliver Lambdas sharing the DynamoDB rate budget, Commit; the
HubSpot sandbox on loopback behind a real HubSpotDestination; rejected records in the SQS
dead-letter queue and the run record in DynamoDB. And a batch whose transient failure outlasts the
ASL's Retry: caught into the dead-letter queue while the run commits the rest.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from syncback.batches import manifest_key, receipt_key
from syncback.destinations.base import Outcome
from syncback.errors import DestinationUnavailable
from syncback.runner import Runtime
from syncback.sandbox.hubspot import HubSpotSandbox
from syncback.shared_budget import DynamoRateBudget
from syncback.state import DeadLetter
from tests.conftest import BASE_SYNC, ProjectFactory, contacts_rows
from tests.fakes.recording import RecordingDestination
from tests.integration.sfn_harness import (
    BUDGETS_TABLE,
    TEST_SUBSTITUTIONS,
    Stack,
    build_stack,
    mocked_aws,
    snapshot,
)
from tests.integration.test_faults import FAULTS, PATIENT, assert_holds_the_model, held

ROWS = 20_000
BATCH_SIZE = 1_000  # 20 batches: 20 Deliver invocations, four at a time
CONCURRENCY = 4
TOKEN = "test-token"  # what make_project puts in HUBSPOT_TOKEN


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from mocked_aws(monkeypatch)


@pytest.fixture
def sandbox() -> Iterator[HubSpotSandbox]:
    # a short window so that an injected 429's "wait one interval" is short too
    with HubSpotSandbox(token=TOKEN, requests_per_window=10_000, window_seconds=0.2) as server:
        yield server


def faulty_stack(
    make_project: ProjectFactory, sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch, rows: Any
) -> Stack:
    """Return the stack delivering ``rows`` to the sandbox, through its real client and shared budget."""
    destination = {
        **BASE_SYNC["destination"],
        "base_url": sandbox.url,
        "timeout_s": 0.3,  # below the sandbox's injected timeouts (0.6 s): they time out on our side
        "concurrency": CONCURRENCY,
    }
    project = make_project(rows=rows, destination=destination, batch_size=BATCH_SIZE)
    return build_stack(
        # more Lambda concurrency than the destination's: the map's MaxConcurrency is what holds them back
        project,
        None,
        monkeypatch,
        retry=PATIENT,
        shared_budget=True,
        lambda_concurrency=2 * CONCURRENCY,
    )


def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    """Drain the dead-letter queue; return the message bodies."""
    return [json.loads(m["Body"]) for m in stack.drain(stack.dead_letter_queue)]


def test_faults_through_the_state_machine_lose_nothing_duplicate_nothing_and_converge(
    aws: None, make_project: ProjectFactory, sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 20,000 rows, 2% of which HubSpot rejects, and a sandbox injecting faults
    rows = contacts_rows(ROWS)
    rejected_emails = {row[1] for row in random.Random(5).sample(rows, ROWS * 2 // 100)}
    stack = faulty_stack(make_project, sandbox, monkeypatch, rows)
    sandbox.set_faults(dataclasses.replace(FAULTS, reject_values=rejected_emails))

    # When the state machine runs the sync through the faults
    execution = stack.run(timeout_s=180)

    # Then every batch was delivered, and the counts add up in the run record in DynamoDB
    assert execution["status"] == "SUCCEEDED", execution
    plan = json.loads(execution["output"])["plan"]
    assert (plan["changes"], plan["batches"]) == (ROWS, ROWS // BATCH_SIZE)
    (record,) = stack.rt.state.runs("contacts")
    assert record.planned["added"] == ROWS == record.delivered + record.rejected + record.skipped
    assert (record.undelivered, record.rejected, record.status) == (0, len(rejected_emails), "partial")
    injected = sandbox.stats()["injected"]
    assert injected["429"] > 0 and injected["5xx"] > 0, "the faults were really injected"
    # by Deliver Lambdas running side by side, each reserving its requests on the one shared budget
    assert stack.invocations.count("deliver") >= ROWS // BATCH_SIZE and 1 < stack.peak <= CONCURRENCY
    (budget,) = stack.rt.budgets.values()
    assert isinstance(budget, DynamoRateBudget)
    assert stack.rt.state.client.scan(TableName=BUDGETS_TABLE)["Count"] == 1
    # and exactly the rejected records are in the dead-letter queue, with HubSpot's reason
    letters = [DeadLetter(**body) for body in dead_letters(stack)]
    assert sorted(d.record["email"] for d in letters) == sorted(rejected_emails)
    assert all(d.reason.startswith("VALIDATION_ERROR") for d in letters)
    # and every accepted record equals its model row, none created twice
    assert_holds_the_model(sandbox, rows, rejected_emails)

    # When Lambda delivers a batch of that run again (a retry after a timeout), Then the stored
    # receipt answers it and nothing is sent
    first = stack.rt.store.get_json(manifest_key("contacts", plan["run_id"]))[0]["batch"]
    requests = sandbox.stats()["requests"]
    again = stack.invoke("deliver", {"sync": "contacts", "run_id": plan["run_id"], "batch": first})
    outcomes = stack.rt.store.get_json(receipt_key(first))["outcomes"]
    counts = {s: sum(o[1] == s for o in outcomes) for s in ("delivered", "rejected", "undelivered")}
    assert again == {**counts, "wait_s": 0}
    assert sandbox.stats()["requests"] == requests

    # When the cause is fixed, the next execution delivers exactly the rejected records
    sandbox.set_faults(dataclasses.replace(FAULTS, reject_values=set()))
    second = json.loads(stack.run(timeout_s=60)["output"])
    assert second["plan"]["changes"] == len(rejected_emails)
    assert second["run"] | {"planned": None} == {
        "planned": None,
        "status": "succeeded",
        "delivered": len(rejected_emails),
        "rejected": 0,
        "skipped": 0,
        "undelivered": 0,
    }
    assert held(sandbox).keys() == {row[1] for row in rows}
    # and a further execution plans zero changes; still nothing was created twice
    assert json.loads(stack.run(timeout_s=60)["output"])["plan"]["changes"] == 0
    assert sandbox.stats()["created"] == ROWS
    assert dead_letters(stack) == []


def test_a_batch_failing_transiently_past_its_retries_goes_to_the_dead_letter_queue_and_the_run_commits(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three batches, the second of which meets a destination outage that outlasts every retry
    project = make_project(rows=contacts_rows(150))
    destination = RecordingDestination()
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    deliver = stack.handlers["deliver"]
    real_deliver_pass = deliver.deliver_pass

    def outage(rt: Runtime, sync: str, batch: str, *args: Any) -> tuple[list[Outcome], float | None]:
        if batch.endswith("/batches/00001.json"):
            raise DestinationUnavailable("HubSpot answered 503")
        return real_deliver_pass(rt, sync, batch, *args)

    monkeypatch.setattr(deliver, "deliver_pass", outage)
    # When the sync runs
    execution = stack.run()
    # Then Step Functions retried that batch as the ASL says (1 + MaxAttempts), then caught it
    assert execution["status"] == "SUCCEEDED", execution
    assert stack.invocations.count("deliver") == 2 + 1 + int(TEST_SUBSTITUTIONS["TransientRetryMaxAttempts"])
    (message,) = dead_letters(stack)
    assert (message["error"], message["batch"].rsplit("/", 1)[-1]) == ("DestinationUnavailable", "00001.json")
    assert "HubSpot answered 503" in message["cause"]
    # and the run committed the other two batches; the failed one is planned again next run
    run = json.loads(execution["output"])["run"]
    assert (run["status"], run["delivered"], run["undelivered"]) == ("partial", 100, 50)
    failed = {c[0] for c in stack.rt.store.get_json(message["batch"])["changes"]}
    assert set(snapshot(project)) == {str(i) for i in range(1, 151)} - failed
    monkeypatch.setattr(deliver, "deliver_pass", real_deliver_pass)
    assert json.loads(stack.run()["output"])["run"]["delivered"] == 50
    assert len(destination.records) == 150
