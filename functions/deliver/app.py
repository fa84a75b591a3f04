"""Deliver one batch of a run and store its receipt; the state machine calls it once per batch,
or once per pass while the batch's jobs run (destinations that work in jobs): it answers how long
to wait before the next pass, and the state machine waits in a Wait state, not in this Lambda."""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from syncback.aws import lambda_tracer
from syncback.aws import run_runtime as runtime
from syncback.batch_delivery import deliver_pass
from syncback.delivery import Interrupt
from syncback.telemetry import LambdaLogger, Metrics, MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = LambdaLogger(service="syncback")  # the engine logs to "syncback" too: same JSON, same keys
metrics = Metrics()
tracer = lambda_tracer()  # X-Ray only when the stack turns tracing on


RECEIPT_S = 5.0  # time kept to write the receipt after the last request


class DeliverEvent(BaseModel):
    sync: str
    run_id: str
    batch: str
    deadline: str = ""  # the run's: past it, the batch is left for the next run


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    request = DeliverEvent.model_validate(event)
    logger.append_keys(sync=request.sync, run_id=request.run_id, batch=request.batch)
    rt = runtime(request.sync, request.run_id)  # the spec the run was planned with
    # stop starting requests while there is time left to finish one and store the receipt
    reserve = rt.project.sync(request.sync).destination.timeout_s + RECEIPT_S
    left = context.get_remaining_time_in_millis() / 1000 - reserve
    if request.deadline:
        until_run_deadline = (
            dt.datetime.fromisoformat(request.deadline) - dt.datetime.now(dt.UTC)
        ).total_seconds()
        left = min(left, until_run_deadline)
    outcomes, wait = deliver_pass(rt, request.sync, request.batch, Interrupt(time.monotonic() + left))
    counts = {s: sum(o.status == s for o in outcomes) for s in ("delivered", "rejected", "undelivered")}
    metrics.add_dimension("sync", request.sync)
    if wait is not None:  # jobs under way: the records are counted when the batch is done
        metrics.add_metric("job_passes", MetricUnit.Count, 1)
        logger.info("jobs under way", extra=counts)
        return {**counts, "wait_s": max(1, math.ceil(wait))}
    for status, count in counts.items():  # progress while a run goes on; commit publishes the run's totals
        metrics.add_metric(f"batch_{status}", MetricUnit.Count, count)
    logger.info("delivered", extra=counts)
    return {**counts, "wait_s": 0}
