"""On AWS, trouble that is not about records fails the execution, is recorded, and frees the lock.

The real ASL in moto's Step Functions interpreter with the handlers in-process (``sfn_harness``):
systemic refusals and refused credentials fail the execution without dead letters; a deliver
Lambda that times out is retried, then dead-lettered; a Plan or Commit that fails for good is
recorded and gives the lock back, and the next run commits what that one delivered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from syncback.destinations.base import Change, Outcome
from syncback.errors import SystemicError, WarehouseUnavailable
from tests.conftest import ProjectFactory, contacts_rows
from tests.fakes.recording import RecordingDestination
from tests.integration.sfn_harness import build_stack, mocked_aws, snapshot

#: what the Lambda service reports when a function runs out of time (errorType "Sandbox.Timedout")
LambdaTimedOut = type("Sandbox.Timedout", (Exception,), {})


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from mocked_aws(monkeypatch)


class WrongObject(RecordingDestination):
    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        self.requests.append([c.key for c in changes])
        raise SystemicError(
            "HubSpot answered 400: Unable to infer object type from: contactz", "destination.object"
        )


def test_a_systemic_refusal_fails_the_execution_without_dead_letters(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(150))
    stack = build_stack(project, lambda sync: WrongObject(), monkeypatch)
    execution = stack.run()
    assert execution["status"] == "FAILED"
    (record,) = stack.rt.state.runs("contacts")
    assert record.status == "failed" and "destination.object" in (record.error or "")
    assert (record.rejected, record.undelivered) == (0, 150)
    assert stack.drain(stack.dead_letter_queue) == []


def test_a_deliver_lambda_that_times_out_is_retried_then_dead_lettered(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(100))
    destination = RecordingDestination()
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    deliver = stack.handlers["deliver"]
    real = deliver.deliver_pass
    timeouts = {"00000.json": 2, "00001.json": 99}  # the first recovers on its last retry; the second never

    def timing_out(rt: Any, sync: str, batch: str, *args: Any) -> Any:
        name = batch.rsplit("/", 1)[-1]
        if timeouts.get(name, 0) > 0:
            timeouts[name] -= 1
            raise LambdaTimedOut("Task timed out after 900.00 seconds")
        return real(rt, sync, batch, *args)

    monkeypatch.setattr(deliver, "deliver_pass", timing_out)
    execution = stack.run()
    # Then both were retried twice (a bounded number), the first delivered, the second dead-lettered
    assert execution["status"] == "SUCCEEDED", execution
    assert stack.invocations.count("deliver") == 3 + 3
    (message,) = stack.drain(stack.dead_letter_queue)
    assert json.loads(message["Body"])["error"] == "Sandbox.Timedout"
    run = json.loads(execution["output"])["run"]
    assert (run["delivered"], run["undelivered"]) == (50, 50)


def test_a_plan_failing_past_its_retries_is_recorded_and_frees_the_lock(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(10))
    stack = build_stack(project, lambda sync: RecordingDestination(), monkeypatch)
    plan = stack.handlers["plan"]
    real = plan.start_run

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise WarehouseUnavailable("cannot reach Snowflake account 'acme'")

    monkeypatch.setattr(plan, "start_run", unreachable)
    execution = stack.run()
    assert (execution["status"], execution["error"]) == ("FAILED", "WarehouseUnavailable")
    (record,) = stack.rt.state.runs("contacts")
    assert record.status == "failed" and "cannot reach Snowflake" in (record.error or "")
    monkeypatch.setattr(plan, "start_run", real)
    assert json.loads(stack.run()["output"])["run"]["delivered"] == 10  # the lock was free


def test_a_commit_failing_for_good_is_recorded_frees_the_lock_and_the_next_run_commits_it(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import syncback.snapshot as snapshot_module

    project = make_project(rows=contacts_rows(120))
    destination = RecordingDestination()
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    real_merge = snapshot_module._merge

    def down(*args: Any, **kwargs: Any) -> int:
        raise WarehouseUnavailable("Snowflake cancelled the statement")

    monkeypatch.setattr(snapshot_module, "_merge", down)
    execution = stack.run()
    assert (execution["status"], execution["error"]) == ("FAILED", "WarehouseUnavailable")
    (record,) = stack.rt.state.runs("contacts")
    assert record.status == "failed" and not record.settled and len(destination.records) == 120
    # When the warehouse is back, the next run first commits the last one's deliveries
    monkeypatch.setattr(snapshot_module, "_merge", real_merge)
    requests = len(destination.requests)
    output = json.loads(stack.run()["output"])
    assert output["plan"]["changes"] == 0 and len(destination.requests) == requests
    assert len(snapshot(project)) == 120
    recovered = next(r for r in stack.rt.state.runs("contacts") if r.run_id == record.run_id)
    assert recovered.settled and recovered.delivered == 120 and "RunInterrupted" in (recovered.error or "")


def test_a_plan_retried_after_it_ran_plans_the_same_run_and_is_not_skipped(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(20))
    destination = RecordingDestination()
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    plan = stack.handlers["plan"]
    real = plan.start_run
    lost = {"answers": 1}

    def answer_lost(*args: Any, **kwargs: Any) -> Any:
        started = real(*args, **kwargs)
        if lost["answers"]:
            lost["answers"] -= 1
            raise WarehouseUnavailable("the answer to Step Functions was lost")  # after the plan ran
        return started

    monkeypatch.setattr(plan, "start_run", answer_lost)
    execution = stack.run()
    assert execution["status"] == "SUCCEEDED", execution
    (record,) = stack.rt.state.runs("contacts")
    assert record.status == "succeeded" and record.delivered == 20


def test_a_replay_while_a_run_holds_the_lock_hands_every_message_of_that_sync_back(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncback.state import DeadLetter

    project = make_project(rows=contacts_rows(10))
    stack = build_stack(project, lambda sync: RecordingDestination(), monkeypatch)
    letter = DeadLetter(
        "contacts",
        "r1",
        "3",
        "upsert",
        "h",
        None,
        {"email": "user3@example.com"},
        "why",
        "2026-01-01T00:00:00+00:00",
    )
    event = {
        "Records": [
            {
                "messageId": f"m{i}",
                "body": json.dumps(letter.to_json()),
                "receiptHandle": "h",
                "attributes": {},
            }
            for i in range(3)
        ]
    }
    with stack.rt.state.lock("contacts"):  # a run of the sync is between its delivery and commit
        response = stack.invoke("replay", event)
    assert response == {"batchItemFailures": [{"itemIdentifier": f"m{i}"} for i in range(3)]}
    # and once the lock is free, the three messages are one replay: the record is sent once
    destination = RecordingDestination()
    stack.rt.destination_factory = lambda sync: destination
    assert stack.invoke("replay", event) == {"batchItemFailures": []}
    assert destination.requests == [["3"]]


def test_an_execution_that_timed_out_is_recorded_and_frees_the_lock(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncback.steps import run_id_for

    project = make_project(rows=contacts_rows(10))
    stack = build_stack(project, lambda sync: RecordingDestination(), monkeypatch)
    # Given a run that took the lock, planned, then its execution timed out (no state ran after)
    run_id = run_id_for("contacts-abc", "2026-11-30T10:00:00.123Z")
    stack.rt.state.acquire("contacts", run_id)
    event = {
        "source": "aws.states",
        "detail-type": "Step Functions Execution Status Change",
        "detail": {
            "name": "contacts-abc",
            "status": "TIMED_OUT",
            "startDate": 1796032800123,
            "input": json.dumps({"sync": "contacts", "full_resync": False}),
        },
    }
    # When EventBridge tells the trigger
    assert stack.invoke("trigger", event) == {"ended": [run_id]}
    # Then the run is in the history as failed, and the next run is not skipped
    (record,) = stack.rt.state.runs("contacts")
    assert record.run_id == run_id and record.status == "failed" and "timed out" in (record.error or "")
    assert json.loads(stack.run()["output"])["run"]["delivered"] == 10
