"""Plan one run of a sync: batches and their manifest in S3; the state machine delivers them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from syncback.aws import LambdaSettings, lambda_tracer
from syncback.aws import handler_runtime as runtime
from syncback.steps import SyncRequest, run_deadline, run_id_for, start_run
from syncback.telemetry import LambdaLogger, Metrics, MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = LambdaLogger(service="syncback")  # the engine logs to "syncback" too: same JSON, same keys
metrics = Metrics()
tracer = lambda_tracer()  # X-Ray only when the stack turns tracing on
SETTINGS = LambdaSettings.from_env()


class PlanEvent(BaseModel):
    sync: str
    execution: str  # $$.Execution.Name and StartTime: the run id is theirs, the same on a retry
    started_at: str
    request: SyncRequest  # the execution's input


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = PlanEvent.model_validate(event)
    run_id = run_id_for(request.execution, request.started_at)
    logger.append_keys(sync=request.sync, run_id=run_id)
    started = start_run(
        runtime(),
        SETTINGS.bucket,
        request.sync,
        run_id,
        request.request.full_resync,
        SETTINGS.max_concurrency,
        run_deadline(request.started_at, SETTINGS.run_timeout_s),
        request.request.trigger,
    )
    metrics.add_dimension("sync", request.sync)
    metrics.add_metric("planned", MetricUnit.Count, started.changes)
    logger.info("planned", extra={"changes": started.changes, "batches": started.batches})
    return started.model_dump()
