"""Replay dead letters redriven from the DeadLetterQueue to the ReplayQueue (partial batch responses)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from syncback.aws import handler_runtime as runtime
from syncback.aws import lambda_tracer
from syncback.steps import replay_messages
from syncback.telemetry import LambdaLogger, Metrics, MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = LambdaLogger(service="syncback")  # the engine logs to "syncback" too: same JSON, same keys
metrics = Metrics()
tracer = lambda_tracer()  # X-Ray only when the stack turns tracing on


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    messages = [(record["messageId"], record["body"]) for record in event.get("Records", [])]
    failed, results = replay_messages(runtime(), messages)
    for sync, result in results.items():
        logger.info("replayed", extra={"sync": sync, "delivered": result.delivered, "stale": result.stale})
        metrics.add_metric("replayed", MetricUnit.Count, result.delivered)
        metrics.add_metric("replay_stale", MetricUnit.Count, result.stale)
    # the failed ones go back to the queue, and after maxReceiveCount to the dead-letter queue
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}
