"""The real SyncRun ASL in moto's Step Functions interpreter, with the five handlers run in-process.

moto cannot run Lambda code, so ``_invoke_lambda_function`` of moto's Step Functions parser (the
call behind ``arn:aws:states:::lambda:invoke``) is patched to call our handlers here, turning an
exception into a Lambda ``FunctionError`` whose ``errorType`` is the class name, as the Lambda
Python runtime does. The resources are created by boto3 under the template's names, and the
handlers' Runtime is the one ``lambda_runtime`` builds from the template's environment. moto runs
the Distributed Map with ``ItemReader`` from S3 for real, so the Deliver step is the deployed one.
Shared by the state machine tests and the fault-injection suite that runs through it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import boto3
import duckdb
import pytest
from moto import mock_aws
from moto.stepfunctions.parser.api import HistoryEventType, MapRunFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.distributed_iteration_component import (
    DistributedIterationComponent,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

from syncback.aws import LambdaSettings, lambda_runtime, run_project
from syncback.delivery import RetryPolicy
from syncback.destinations.base import Destination
from syncback.runner import Runtime
from syncback.spec import Project, SyncSpec

ROOT = Path(__file__).resolve().parents[2]
REGION: Final = "eu-west-1"
ACCOUNT = "123456789012"
ENV = "test"
BUCKET = f"syncback-{ENV}-batches-{ACCOUNT}"
RUNS_TABLE = f"syncback-{ENV}-runs"
BUDGETS_TABLE = f"syncback-{ENV}-budgets"
FUNCTIONS = ("plan", "deliver", "commit", "trigger", "replay")
#: the template's DefinitionSubstitutions, with retry waits short enough for a test
TEST_SUBSTITUTIONS = {
    "TransientRetryIntervalSeconds": "1",
    "TransientRetryMaxAttempts": "3",
    "TransientRetryMaxDelaySeconds": "1",
    "LambdaRetryIntervalSeconds": "1",
    "RunTimeoutSeconds": "300",
    "EventBusName": "default",
}
#: no waits between in-process retries: the state machine's own Retry is what these tests watch
NO_WAIT = RetryPolicy(attempts=2, base_s=0, cap_s=0)


def render_asl(substitutions: dict[str, str]) -> str:
    """Return the ASL with ``${Name}`` replaced, as CloudFormation's DefinitionSubstitutions do."""
    text = (ROOT / "infra/statemachine/sync.asl.json").read_text()
    for name, value in substitutions.items():
        text = text.replace("${" + name + "}", value)
    assert "${" not in text, "a substitution is missing"
    return text


@dataclass
class FakeContext:
    function_name: str
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = ""
    aws_request_id: str = "req-1"
    remaining_ms: int = 900_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def load_handler(name: str) -> ModuleType:
    """Import ``functions/<name>/app.py`` under a unique module name (they are all called app)."""
    spec = importlib.util.spec_from_file_location(f"syncback_fn_{name}", ROOT / "functions" / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as the Lambda runtime imports it: pydantic resolves names there
    spec.loader.exec_module(module)
    return module


@dataclass
class Stack:
    """The moto resources under the template's names, the handlers, and the runtime they share."""

    rt: Runtime
    sfn: Any
    sqs: Any
    s3: Any
    state_machine: str
    dead_letter_queue: str
    replay_queue: str
    finished_queue: str
    handlers: dict[str, ModuleType]
    invocations: list[str]
    running: int = 0  # invocations under way now
    peak: int = 0  # the most that were ever under way at once

    def run(self, sync: str = "contacts", full_resync: bool = False, timeout_s: float = 60) -> dict[str, Any]:
        """Start an execution and return its description once it has finished."""
        arn = self.sfn.start_execution(
            stateMachineArn=self.state_machine,
            name=f"{sync}-{uuid.uuid4().hex[:12]}",  # moto names every unnamed execution "None"
            input=json.dumps({"sync": sync, "full_resync": full_resync}),
        )["executionArn"]
        return self.wait(arn, timeout_s)

    def wait(self, arn: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            description: dict[str, Any] = self.sfn.describe_execution(executionArn=arn)
            if description["status"] != "RUNNING":
                return description
            time.sleep(0.05)
        raise AssertionError(f"execution {arn} still running after {timeout_s}s")

    def drain(self, queue: str) -> list[dict[str, Any]]:
        """Receive (and delete) every message of ``queue``."""
        messages: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return messages
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(batch)]
            self.sqs.delete_message_batch(QueueUrl=queue, Entries=entries)
            messages += batch

    def invoke(self, name: str, event: dict[str, Any]) -> Any:
        return self.handlers[name].handler(event, FakeContext(f"syncback-{ENV}-{name}"))


def snapshot(project: Project) -> dict[str, str]:
    """Return the committed snapshot of the contacts sync: key → row hash."""
    con = duckdb.connect(str(project.root / "wh.duckdb"))
    rows = con.execute("select key, row_hash from syncback.snapshot__contacts where not removed").fetchall()
    con.close()
    return dict(rows)


def mocked_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Yield inside moto, with the environment every function of the template has (a fixture's body)."""
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "syncback",
        "POWERTOOLS_SERVICE_NAME": "syncback",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(DistributedIterationComponent, "_map_run", _map_run_failing_on_a_failed_item)
    # the handlers' LambdaLogger takes the "syncback" logger over (its own handler, no propagation):
    # give it back, or a later test in this process that reads the engine's log lines sees none
    engine = logging.getLogger("syncback")
    saved = (list(engine.handlers), engine.level, engine.propagate)
    try:
        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            yield
    finally:
        engine.handlers, engine.level, engine.propagate = saved


_moto_map_run = DistributedIterationComponent._map_run


def _map_run_failing_on_a_failed_item(self: Any, env: Any, eval_input: Any) -> None:
    """moto's Distributed Map counts a failed iteration but succeeds anyway; AWS fails the map run
    (States.ExceedToleratedFailureThreshold) when more fail than it tolerates, 0 unless the ASL
    says otherwise. Do as AWS does."""
    _moto_map_run(self, env, eval_input)
    record = eval_input.map_run_record
    failed = record.item_counter.failed.get()
    if failed > eval_input.tolerated_failure_count:
        raise FailureEventException(
            failure_event=FailureEvent(
                env=env,
                error_name=StatesErrorName(typ=StatesErrorNameType.StatesExceedToleratedFailureThreshold),
                event_type=HistoryEventType.MapRunFailed,
                event_details=EventDetails(
                    mapRunFailedEventDetails=MapRunFailedEventDetails(
                        error="States.ExceedToleratedFailureThreshold",
                        cause=f"{failed} of the map's iterations failed",
                    )
                ),
            )
        )


def _create_table(ddb: Any, name: str, hash_key: str, range_key: str | None = None) -> None:
    keys = [(hash_key, "HASH")] + ([(range_key, "RANGE")] if range_key else [])
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in keys],
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k, _ in keys],
        BillingMode="PAY_PER_REQUEST",
    )


def build_stack(
    project: Project,
    destinations: Callable[[SyncSpec], Destination] | None,
    monkeypatch: pytest.MonkeyPatch,
    *,
    retry: RetryPolicy = NO_WAIT,
    shared_budget: bool = False,
    lambda_concurrency: int = 1,
) -> Stack:
    """Create the stack's resources in moto and return it, the handlers patched in.

    ``destinations`` None: each sync's real destination client, from its spec. ``shared_budget``:
    the BudgetsTable exists and the deliverers share a DynamoDB rate budget, as deployed.
    ``lambda_concurrency``: how many invocations run at once (1: one at a time, in order).
    """
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    ddb = boto3.client("dynamodb", region_name=REGION)
    _create_table(ddb, RUNS_TABLE, "sync", "run_id")
    sqs = boto3.client("sqs", region_name=REGION)
    dlq = sqs.create_queue(QueueName=f"syncback-{ENV}-dead-letters")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    replay_queue = sqs.create_queue(
        QueueName=f"syncback-{ENV}-replay",
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})},
    )["QueueUrl"]
    finished = sqs.create_queue(QueueName=f"syncback-{ENV}-finished-runs")["QueueUrl"]
    finished_arn = sqs.get_queue_attributes(QueueUrl=finished, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events = boto3.client("events", region_name=REGION)
    events.put_rule(Name="finished-runs", EventPattern=json.dumps({"source": ["syncback"]}))
    events.put_targets(Rule="finished-runs", Targets=[{"Id": "queue", "Arn": finished_arn}])
    function_arns = {
        f"{n.capitalize()}FunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:syncback-{ENV}-{n}"
        for n in FUNCTIONS
    }
    definition = render_asl({**TEST_SUBSTITUTIONS, **function_arns, "DeadLetterQueueUrl": dlq})
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.create_state_machine(
        name=f"syncback-{ENV}-sync-run", definition=definition, roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn"
    )["stateMachineArn"]

    environment = {
        "BATCH_BUCKET": BUCKET,
        "RUNS_TABLE": RUNS_TABLE,
        "DEAD_LETTER_QUEUE_URL": dlq,
        "SYNCBACK_PROJECT": str(project.root),
        "STATE_MACHINE_ARN": machine,
        "LOCK_LEASE_MINUTES": "5",
    }
    if shared_budget:
        _create_table(ddb, BUDGETS_TABLE, "budget")
        environment["BUDGETS_TABLE"] = BUDGETS_TABLE
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # the runtime every handler builds from its environment; only the retry waits and fakes differ
    rt = dataclasses.replace(
        lambda_runtime(LambdaSettings.from_env()),
        project=project,
        retry=retry,
        destination_factory=destinations,
    )
    handlers = {name: load_handler(name) for name in FUNCTIONS}
    for module in handlers.values():
        monkeypatch.setattr(module, "runtime", lambda: rt)
    # Deliver works to the spec Plan stored with the run, as in the Lambda
    monkeypatch.setattr(
        handlers["deliver"],
        "runtime",
        lambda sync, run_id: dataclasses.replace(
            rt, project=run_project(rt.store, project.root, sync, run_id) or rt.project
        ),
    )
    stack = Stack(rt, sfn, sqs, s3, machine, dlq, replay_queue, finished, handlers, [])
    monkeypatch.setattr(
        lambda_eval_utils, "_invoke_lambda_function", in_process_lambda(stack, lambda_concurrency)
    )
    return stack


def in_process_lambda(stack: Stack, concurrency: int = 1) -> Callable[..., dict[str, Any]]:
    """Return a stand-in for moto's Lambda invoke that runs our handler, ``concurrency`` at a time."""
    slots = threading.BoundedSemaphore(concurrency)  # as the functions' reserved concurrency would
    counting = threading.Lock()

    def count(step: int) -> None:
        with counting:
            stack.running += step
            stack.peak = max(stack.peak, stack.running)

    def invoke(parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
        name = parameters["FunctionName"].rsplit("-", 1)[-1]
        payload = parameters.get("Payload")
        event: dict[str, Any] = json.loads(payload) if isinstance(payload, str | bytes) else payload or {}
        with slots:
            stack.invocations.append(name)
            count(+1)
            try:
                result = stack.invoke(name, event)
            except Exception as exc:
                error = {"errorType": type(exc).__name__, "errorMessage": str(exc)}
                return {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": error}
            finally:
                count(-1)
        return {"StatusCode": 200, "Payload": json.loads(json.dumps(result))}

    return invoke


def sqs_record(message: dict[str, Any]) -> dict[str, Any]:
    """Return an SQS message as a Lambda event source mapping delivers it (one of ``Records``)."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": "handle",
        "body": message["Body"],
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:syncback-{ENV}-replay",
        "awsRegion": REGION,
    }
