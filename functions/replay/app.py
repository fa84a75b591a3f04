"""Replay dead letters redriven from the DeadLetterQueue to the ReplayQueue (partial batch responses)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from syncback.aws import handler_runtime as runtime
from syncback.commit import replay
from syncback.steps import letters_of_message

logger = Logger(service="syncback")  # the engine logs to "syncback" too: same JSON, same keys
metrics = Metrics()
tracer = Tracer()
processor = BatchProcessor(event_type=EventType.SQS)


def replay_message(record: SQSRecord) -> None:
    """Replay one message: a rejected record (DeadLetter) or a batch that failed whole (FailedBatch)."""
    sync, letters = letters_of_message(runtime(), record.body)
    result = replay(runtime(), sync, letters)
    logger.info("replayed", extra={"sync": sync, "delivered": result.delivered, "stale": result.stale})
    metrics.add_metric("replayed", MetricUnit.Count, result.delivered)
    metrics.add_metric("replay_stale", MetricUnit.Count, result.stale)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return process_partial_response(
        event=event, record_handler=replay_message, processor=processor, context=context
    )
