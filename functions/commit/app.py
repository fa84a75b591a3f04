"""Commit a run: advance the snapshot by what was delivered, record the run, publish its metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from syncback.aws import handler_runtime as runtime
from syncback.aws import lambda_tracer
from syncback.steps import abandon_run, finish_run, run_id_for, run_metrics
from syncback.telemetry import LambdaLogger, Metrics, MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = LambdaLogger(service="syncback")  # the engine logs to "syncback" too: same JSON, same keys
metrics = Metrics()
tracer = lambda_tracer()  # X-Ray only when the stack turns tracing on


class CommitEvent(BaseModel):
    sync: str
    execution: str
    started_at: str
    error: str | None = None
    abandon: bool = False  # the run cannot finish: record it failed and free the lock, no warehouse


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = CommitEvent.model_validate(event)
    run_id = run_id_for(request.execution, request.started_at)
    logger.append_keys(sync=request.sync, run_id=run_id)
    if request.abandon:
        record = abandon_run(runtime(), request.sync, run_id, request.error or "the run failed")
    else:
        record = finish_run(runtime(), request.sync, run_id, request.error)
    metrics.add_dimension("sync", request.sync)
    for name, value in run_metrics(record).items():
        metrics.add_metric(name, MetricUnit.Seconds if name == "run_duration" else MetricUnit.Count, value)
    summary = {k: v for k, v in record.to_json().items() if not k.endswith("_sample")}
    logger.info("committed", extra=summary)
    return summary
