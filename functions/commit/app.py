"""Commit a run: advance the snapshot by what was delivered, record the run, publish its metrics."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from syncback.aws import handler_runtime as runtime
from syncback.steps import finish_run

logger = Logger(service="syncback")  # the engine logs to "syncback" too: same JSON, same keys
metrics = Metrics()
tracer = Tracer()


class CommitEvent(BaseModel):
    sync: str
    run_id: str
    error: str | None = None


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = CommitEvent.model_validate(event)
    logger.append_keys(sync=request.sync, run_id=request.run_id)
    record = finish_run(runtime(), request.sync, request.run_id, request.error)
    metrics.add_dimension("sync", request.sync)
    for name in ("delivered", "rejected", "skipped", "undelivered"):
        metrics.add_metric(name, MetricUnit.Count, getattr(record, name))
    metrics.add_metric("invalid", MetricUnit.Count, record.planned.get("invalid", 0))
    metrics.add_metric("run_duration", MetricUnit.Seconds, record.duration_s)
    summary = {k: v for k, v in record.to_json().items() if not k.endswith("_sample")}
    logger.info("committed", extra=summary)
    return summary
