"""Start SyncRun executions: from an SQS sync request, a dbt run_results.json in S3, or a direct call."""

from __future__ import annotations

import functools
import uuid
from typing import TYPE_CHECKING, Any

import boto3

from syncback.aws import LambdaSettings, lambda_tracer
from syncback.aws import handler_runtime as runtime
from syncback.steps import requested_runs, run_ended
from syncback.telemetry import LambdaLogger, Metrics, MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = LambdaLogger(service="syncback")  # the engine logs to "syncback" too: same JSON, same keys
metrics = Metrics()
tracer = lambda_tracer()  # X-Ray only when the stack turns tracing on
SETTINGS = LambdaSettings.from_env()


@functools.cache
def stepfunctions() -> Any:
    return boto3.client("stepfunctions")


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, list[str]]:
    if event.get("source") == "aws.states":  # an execution timed out or was aborted
        ended = run_ended(runtime(), event["detail"])
        logger.info("run ended abnormally", extra={"sync": ended.sync, "run_id": ended.run_id})
        return {"ended": [ended.run_id]}
    started = []
    for request in requested_runs(event, runtime()):
        execution = stepfunctions().start_execution(
            stateMachineArn=SETTINGS.state_machine_arn,
            name=f"{request.sync}-{uuid.uuid4().hex[:12]}",  # findable by sync in the console
            input=request.model_dump_json(),
        )
        started.append(execution["executionArn"])
        metrics.add_metric("runs_requested", MetricUnit.Count, 1)
        logger.info("run requested", extra={"sync": request.sync, "execution": execution["executionArn"]})
    return {"executions": started}
