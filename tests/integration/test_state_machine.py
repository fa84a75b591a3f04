"""The real SyncRun ASL in moto's Step Functions interpreter, with the five handlers run in-process.

How the stack is built and the handlers are invoked is in ``sfn_harness``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest

from syncback.aws import (
    DynamoStateStore,
    LambdaSettings,
    S3BatchStore,
    lambda_runtime,
    run_project,
    run_runtime,
)
from syncback.destinations.base import Change, Destination, Outcome
from syncback.errors import ConfigError, DestinationAuthError, DestinationUnavailable
from syncback.runner import Runtime
from syncback.shared_budget import DynamoRateBudget
from syncback.spec import SyncSpec
from syncback.steps import start_run
from tests.conftest import BASE_SYNC, ProjectFactory, contacts_rows, write_contacts, write_project
from tests.fakes.recording import RecordingDestination
from tests.integration.sfn_harness import (
    BUCKET,
    ENV,
    REGION,
    ROOT,
    RUNS_TABLE,
    build_stack,
    load_handler,
    mocked_aws,
    snapshot,
    sqs_record,
)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from mocked_aws(monkeypatch)


class FailingDestination(RecordingDestination):
    """Refuses our credentials (401) for any request holding one of ``auth_fail_keys``."""

    def __init__(self) -> None:
        super().__init__()
        self.auth_fail_keys: set[str] = set()

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        if any(c.key in self.auth_fail_keys for c in changes):
            self.requests.append([c.key for c in changes])
            raise DestinationAuthError("HubSpot answered 401")
        return super().write(changes, scope)


# ---- the runs --------------------------------------------------------------------------------


def test_happy_path_delivers_every_batch_and_commits(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 120 changed rows, in batches of 50
    project = make_project(rows=contacts_rows(120))
    destination = RecordingDestination()
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    # When the state machine runs the sync
    execution = stack.run()
    # Then it succeeds: three batches delivered through the map, one commit
    assert execution["status"] == "SUCCEEDED", execution
    output = json.loads(execution["output"])
    assert output["plan"]["batches"] == 3 and output["plan"]["changes"] == 120
    assert output["run"] == {
        "status": "succeeded",
        "delivered": 120,
        "rejected": 0,
        "skipped": 0,
        "undelivered": 0,
        "planned": {"added": 120, "changed": 0, "removed": 0, "unchanged": 0, "invalid": 0},
    }
    assert sorted(stack.invocations) == ["commit", "deliver", "deliver", "deliver", "plan"]
    assert len(destination.records) == 120 and len(snapshot(project)) == 120
    # and the run history in DynamoDB says so; the lock was released
    (record,) = stack.rt.state.runs("contacts")
    assert (record.status, record.delivered, record.planned["added"]) == ("succeeded", 120, 120)
    # When it runs again with nothing changed, the Choice skips Deliver
    stack.invocations.clear()
    again = stack.run()
    assert again["status"] == "SUCCEEDED" and stack.invocations == ["plan", "commit"]
    assert json.loads(again["output"])["run"]["status"] == "succeeded"
    # and each finished run was announced on EventBridge with its counts, never its records
    announced = [json.loads(m["Body"]) for m in stack.drain(stack.finished_queue)]
    finished = [e["detail"] for e in announced if e["detail-type"] == "SyncRun Finished"]
    started = [e["detail"] for e in announced if e["detail-type"] == "SyncRun Started"]
    assert sorted(e["delivered"] for e in finished) == [0, 120]
    assert sorted(e["changes"] for e in started) == [0, 120]
    assert set(finished[0]) == {
        "schema_version",
        "sync",
        "run_id",
        "owner",
        "trigger",
        "status",
        "planned",
        "delivered",
        "rejected",
        "skipped",
        "undelivered",
    }
    assert set(started[0]) == {"schema_version", "sync", "run_id", "owner", "trigger", "changes"}
    assert {e["schema_version"] for e in finished + started} == {"1"}
    assert {(e["sync"], e["trigger"]) for e in finished + started} == {("contacts", "request")}


def test_transient_failure_is_retried_by_the_state_machine_then_succeeds(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(100))
    destination = RecordingDestination()
    outages = [DestinationUnavailable("HubSpot answered 503")]

    def destinations(sync: SyncSpec) -> Destination:
        # Given the destination is unreachable once, before delivery starts (no in-process retry)
        if outages:
            raise outages.pop()
        return destination

    stack = build_stack(project, destinations, monkeypatch)
    # When the sync runs
    execution = stack.run()
    # Then the failed Deliver was retried by Step Functions and every record delivered
    assert execution["status"] == "SUCCEEDED", execution
    assert stack.invocations.count("deliver") == 3  # two batches, one retried
    assert json.loads(execution["output"])["run"]["delivered"] == 100
    history = stack.sfn.get_execution_history(executionArn=execution["executionArn"])["events"]
    assert stack.drain(stack.dead_letter_queue) == []
    assert len(snapshot(project)) == 100 and history


def test_refused_credentials_fail_the_execution_record_the_run_and_send_no_dead_letter(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a destination that refuses our credentials for the batch holding key 77
    project = make_project(rows=contacts_rows(150))
    destination = FailingDestination()
    destination.auth_fail_keys = {"77"}
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    # When the sync runs
    execution = stack.run()
    # Then the execution fails (the failed-runs alarm), the run is committed as failed with the
    # error, and no record went to the dead-letter queue: credentials are not the records' fault
    assert execution["status"] == "FAILED", execution
    (record,) = stack.rt.state.runs("contacts")
    assert record.status == "failed" and "DestinationAuthError" in (record.error or "")
    assert record.rejected == 0 and record.delivered + record.undelivered == 150
    assert stack.drain(stack.dead_letter_queue) == []
    # and what was delivered stays delivered: the next run sends only the rest
    destination.auth_fail_keys = set()
    assert json.loads(stack.run()["output"])["plan"]["changes"] == record.undelivered


class DownDestination(RecordingDestination):
    """Answers 503 for any request holding one of ``down_keys`` (an outage past every retry)."""

    def __init__(self) -> None:
        super().__init__()
        self.down_keys: set[str] = set()

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        if any(c.key in self.down_keys for c in changes):
            raise DestinationUnavailable("HubSpot answered 503")
        return super().write(changes, scope)


def test_replay_reports_only_the_failing_message_as_a_batch_item_failure(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(60))
    destination = DownDestination()
    destination.down_keys = {"10"}
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    stack.run()
    (failed_batch,) = stack.drain(stack.dead_letter_queue)
    # Given the whole-batch failure redriven, and one message for a sync that does not exist
    bogus = dict(json.loads(failed_batch["Body"]), sync="nope")
    event = {
        "Records": [
            sqs_record({"MessageId": "m1", "Body": failed_batch["Body"]}),
            sqs_record({"MessageId": "m2", "Body": json.dumps(bogus)}),
        ]
    }
    destination.down_keys = set()
    # When replay handles them
    response = stack.invoke("replay", event)
    # Then the batch's 50 records are delivered and only the bogus message goes back to SQS
    assert response == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
    assert len(snapshot(project)) == 60


# ---- triggers and overlap -------------------------------------------------------------------


def test_sqs_and_s3_triggers_start_the_right_syncs(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(10))
    destination = RecordingDestination()
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    # Given a sync-request message, as the events/trigger.json sample but for this project
    sample = json.loads((ROOT / "events/trigger.json").read_text())
    sample["Records"][0]["body"] = json.dumps({"sync": "contacts", "full_resync": False})
    # When the trigger handles it, Then one execution of that sync runs and delivers
    (arn,) = stack.invoke("trigger", sample)["executions"]
    assert stack.wait(arn)["status"] == "SUCCEEDED" and len(destination.records) == 10
    # Given dbt built analytics.contacts and another model
    run_results = {
        "results": [
            {"unique_id": "model.shop.contacts", "status": "success"},
            {"unique_id": "model.shop.orders", "status": "success"},
        ]
    }
    stack.s3.put_object(Bucket=BUCKET, Key="dbt/run_results.json", Body=json.dumps(run_results))
    s3_event = json.loads((ROOT / "events/trigger_s3.json").read_text())
    (started,) = stack.invoke("trigger", s3_event)["executions"]
    assert json.loads(stack.sfn.describe_execution(executionArn=started)["input"])["sync"] == "contacts"
    stack.wait(started)
    # and a run of a model nobody syncs starts nothing
    stack.s3.put_object(
        Bucket=BUCKET,
        Key="dbt/run_results.json",
        Body=json.dumps({"results": [{"unique_id": "model.shop.orders", "status": "success"}]}),
    )
    assert stack.invoke("trigger", s3_event) == {"executions": []}
    # and a request for a sync that does not exist fails the request without starting anything
    with pytest.raises(ConfigError, match="no sync called 'nope'"):
        stack.invoke("trigger", {"sync": "nope"})
    assert len(stack.sfn.list_executions(stateMachineArn=stack.state_machine)["executions"]) == 2


def test_a_second_run_of_one_sync_is_skipped_and_recorded(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(10))
    destination = RecordingDestination()
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    state = stack.rt.state
    assert isinstance(state, DynamoStateStore)
    # Given a run of the sync holds the lock
    state.acquire("contacts", "20261123T000000Z-aaaaaa")
    # When another execution starts
    execution = stack.run()
    # Then it ends as Skipped without delivering anything, and the skip is in the run history
    assert execution["status"] == "SUCCEEDED" and "skipped" in json.loads(execution["output"])
    assert stack.invocations == ["plan"] and destination.requests == []
    assert [r.status for r in state.runs("contacts")] == ["skipped"]
    # and once the first run releases the lock, the next one runs
    state.release("contacts", "20261123T000000Z-aaaaaa")
    assert json.loads(stack.run()["output"])["run"]["delivered"] == 10


def test_a_lock_left_by_a_crashed_run_expires_with_its_lease(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(10))
    stack = build_stack(project, lambda sync: RecordingDestination(), monkeypatch)
    state = stack.rt.state
    assert isinstance(state, DynamoStateStore)
    # Given a run took the lock 10 minutes ago and crashed (the lease is 5 minutes here)
    crashed = DynamoStateStore(RUNS_TABLE, state.client, lease_minutes=5, clock=lambda: time.time() - 600)
    crashed.acquire("contacts", "20261123T000000Z-crashd")
    # When the next run starts, Then it takes the expired lock and runs
    execution = stack.run()
    assert json.loads(execution["output"])["run"]["delivered"] == 10


def test_a_plan_that_fails_fails_the_execution_records_it_and_releases_the_lock(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a model whose SQL fails
    project = make_project(rows=contacts_rows(3), table=None, model="select * from analytics.nope")
    stack = build_stack(project, lambda sync: RecordingDestination(), monkeypatch)
    # When it runs, Then the execution fails with exactly the engine's error name (the failed-runs alarm)
    execution = stack.run()
    assert (execution["status"], execution["error"]) == ("FAILED", "ModelError")
    (record,) = stack.rt.state.runs("contacts")
    assert record.status == "failed" and (record.error or "").startswith("ModelError: ")
    # and the lock is free for the next run once the model is fixed
    write_contacts(project.root / "wh.duckdb", contacts_rows(3))
    monkeypatch.setattr(stack.rt, "project", make_project(rows=contacts_rows(3)))
    assert json.loads(stack.run()["output"])["run"]["delivered"] == 3


def test_the_lambda_runtime_is_built_from_the_environment(aws: None, make_project: ProjectFactory) -> None:
    # Given the environment the template gives every function
    project = make_project(rows=contacts_rows(1))
    environ = {
        "BATCH_BUCKET": BUCKET,
        "RUNS_TABLE": RUNS_TABLE,
        "BUDGETS_TABLE": f"syncback-{ENV}-budgets",
        "DEAD_LETTER_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/dlq",
        "SYNCBACK_PROJECT": str(project.root),
    }
    # When a handler builds its runtime
    rt = lambda_runtime(LambdaSettings.from_env(environ))
    # Then it reads the packaged project and runs against S3, DynamoDB (history, lock, shared budget) and SQS
    assert list(rt.project.syncs) == ["contacts"]
    assert isinstance(rt.store, S3BatchStore) and rt.store.bucket == BUCKET
    assert isinstance(rt.state, DynamoStateStore) and rt.state.lease_s == 120 * 60
    assert isinstance(rt.budget(rt.project.sync("contacts")), DynamoRateBudget)
    assert LambdaSettings.from_env({**environ, "SYNCBACK_PROJECT": "/opt"}).project == Path("/opt")


def test_a_run_is_delivered_with_the_spec_it_was_planned_with(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run planned by the Plan handler, whose spec Plan stored beside its batches
    project = make_project(rows=contacts_rows(3))
    stack = build_stack(project, lambda sync: RecordingDestination(), monkeypatch)
    run_id = "20261130T000000Z-abcdef"
    start_run(stack.rt, BUCKET, "contacts", run_id, full_resync=False, max_concurrency=4)
    settings = LambdaSettings.from_env()
    # When the packaged spec changes before the deliveries (a deploy in the middle of the run)
    changed = {**BASE_SYNC, "destination": {**BASE_SYNC["destination"], "base_url": "http://127.0.0.1:8"}}
    write_project(project.root, changed)
    run_runtime.cache_clear()  # a container that had not delivered this run yet
    # Then the run's deliveries work to the spec it was planned with, validated from JSON, no YAML read
    pinned = run_runtime("contacts", run_id).project
    assert pinned.sync("contacts") == project.sync("contacts") and list(pinned.syncs) == ["contacts"]
    assert pinned.config == project.config and pinned.root == settings.project
    # And a run planned before Plan stored its spec is delivered with the packaged project
    packaged = run_runtime("contacts", "20261129T000000Z-000000").project
    assert packaged.sync("contacts").destination.base_url == "http://127.0.0.1:8"
    assert run_project(stack.rt.store, project.root, "contacts", "20261129T000000Z-000000") is None
    run_runtime.cache_clear()


def test_the_deliver_handler_imports_neither_yaml_nor_the_warehouse_side() -> None:
    # a deliver Lambda's cold start: it reads the run's pinned spec, never YAML, never a warehouse
    script = (
        "import sys, app; "
        "print(sorted(m for m in ('yaml', 'duckdb', 'syncback.planner', 'syncback.commit', "
        "'syncback.warehouses', 'syncback.snapshot', 'botocore') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "layers" / "syncback"), "POWERTOOLS_TRACE_DISABLED": "true"}
    found = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT / "functions" / "deliver",
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


def test_dead_letters_can_be_listed_without_consuming_them(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(10))
    destination = RecordingDestination()
    destination.reject_keys = {"3"}
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    stack.run()
    # When the CLI lists the sync's dead letters, Then it sees the rejection and its reason
    (letter,) = stack.rt.state.dead_letters("contacts")
    assert (letter.key, letter.reason) == ("3", "VALIDATION_ERROR: not valid")
    # and the message is still there for a redrive
    assert len(stack.drain(stack.dead_letter_queue)) == 1


@pytest.mark.parametrize("name", ["plan", "deliver", "commit", "trigger", "trigger_s3", "replay"])
def test_every_sample_event_is_valid_for_its_handler(
    aws: None, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncback.spec import load_project
    from syncback.state import DeadLetter
    from syncback.steps import FailedBatch, requested_runs

    for variable in ("BATCH_BUCKET", "RUNS_TABLE", "DEAD_LETTER_QUEUE_URL"):
        monkeypatch.setenv(variable, "sample")
    event = json.loads((ROOT / "events" / f"{name}.json").read_text())
    project = load_project(ROOT / "project")
    if name in ("plan", "deliver", "commit"):
        module = load_handler(name)
        model = {"plan": "PlanEvent", "deliver": "DeliverEvent", "commit": "CommitEvent"}[name]
        assert getattr(module, model).model_validate(event).sync in project.syncs
    elif name.startswith("trigger"):

        class Store:
            def get_json(self, key: str) -> Any:
                assert key == "dbt/run_results.json"
                return {"results": [{"unique_id": "model.shop.contacts", "status": "success"}]}

        rt = Runtime(project, Store(), stack_less_state())  # type: ignore[arg-type]
        assert [r.sync for r in requested_runs(event, rt)] == ["contacts_to_hubspot"]
    else:
        bodies = [json.loads(r["body"]) for r in event["Records"]]
        assert DeadLetter(**bodies[0]).sync in project.syncs
        assert FailedBatch.model_validate(bodies[1]).error == "DestinationAuthError"


def stack_less_state() -> DynamoStateStore:
    return DynamoStateStore(RUNS_TABLE, boto3.client("dynamodb", region_name=REGION))


def test_a_failed_deliver_map_still_commits_announces_and_fails_the_execution(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(60))
    destination = RecordingDestination()
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    # Given the manifest never reaches S3, so the Distributed Map's ItemReader fails
    real_put = stack.rt.store.put_json

    def put_json(key: str, document: Any) -> None:
        if not key.endswith("/manifest-1.json"):
            real_put(key, document)

    monkeypatch.setattr(stack.rt.store, "put_json", put_json)
    # When the sync runs
    execution = stack.run()
    # Then the run is committed as failed with the map's error, nothing delivered, and the execution fails
    assert (execution["status"], execution["error"]) == ("FAILED", "DeliveryFailed")
    (record,) = stack.rt.state.runs("contacts")
    assert (record.status, record.delivered, record.undelivered) == ("failed", 0, 60)
    assert record.error and record.error.startswith("States.")
    events = [json.loads(m["Body"]) for m in stack.drain(stack.finished_queue)]
    assert sorted(e["detail-type"] for e in events) == ["SyncRun Finished", "SyncRun Started"]
    (announced,) = [e for e in events if e["detail-type"] == "SyncRun Finished"]
    assert announced["detail"]["status"] == "failed"
    # and the lock is free: the next run (manifest restored) delivers everything
    monkeypatch.setattr(stack.rt.store, "put_json", real_put)
    assert json.loads(stack.run()["output"])["run"]["delivered"] == 60


def test_a_destination_that_works_in_jobs_waits_in_the_state_machine_not_in_a_lambda(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.recording import RecordingJobs

    # Given 120 changed rows in batches of 50, to a destination whose jobs finish on their 2nd poll
    # and that takes 20 jobs at once (5 for each of the 4 batches delivered side by side)
    project = make_project(rows=contacts_rows(120))
    destination = RecordingJobs(max_batch_size=20, max_jobs=20, polls=2)
    destination.reject_keys = {"7"}
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    # When the state machine runs the sync
    execution = stack.run()
    # Then each batch took three passes (submit; poll; poll and done), the state machine waiting
    # between them, and the run committed every record's outcome as a synchronous one would
    assert execution["status"] == "SUCCEEDED", execution
    assert sorted(stack.invocations) == ["commit"] + ["deliver"] * 9 + ["plan"]
    assert json.loads(execution["output"])["run"] | {"planned": None} == {
        "planned": None,
        "status": "partial",
        "delivered": 119,
        "rejected": 1,
        "skipped": 0,
        "undelivered": 0,
    }
    # jobs of at most 20: 3 + 3 + 1, none submitted twice
    assert len(destination.records) == 119 and len(destination.jobs) == 7
    assert len(snapshot(project)) == 119
