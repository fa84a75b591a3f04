"""What the Lambda handlers write to CloudWatch: JSON log lines and EMF metrics, on stdout.

The shapes are Powertools' (its Logger's keys; CloudWatch's embedded metric format, with the
``service`` dimension), so log queries and dashboards read them the same way. They are written
here because importing anything of Powertools imports its Logger, and with it jmespath: about a
quarter of a handler's cold import. Tracing still uses Powertools' Tracer, imported only when the
stack turns tracing on (``aws.lambda_tracer``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

Handler = TypeVar("Handler", bound=Callable[..., Any])

# a LogRecord's own attributes: anything else on a record came from ``extra``
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _JsonLines(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self.keys: dict[str, Any] = {}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": record.levelname,
            "location": f"{record.funcName}:{record.lineno}",
            "message": record.getMessage(),
            "timestamp": self.formatTime(record, "%Y-%m-%d %H:%M:%S") + f",{int(record.msecs):03d}",
            "service": self.service,
            **self.keys,
            **{k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS},
        }
        trace = os.environ.get("_X_AMZN_TRACE_ID", "")
        if trace:
            line["xray_trace_id"] = trace.split(";")[0].removeprefix("Root=")
        if record.exc_info:
            line["exception_name"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class LambdaLogger:
    """JSON lines for the ``service`` logger (the engine's "syncback" logger), one object a line.

    Each line has the level, location, message, timestamp and service, the invocation's keys
    (function name, memory, ARN, request id, cold start), the keys ``append_keys`` gave during this
    invocation, and the ``extra`` of the call. The level is ``POWERTOOLS_LOG_LEVEL`` (or
    ``LOG_LEVEL``), INFO by default."""

    def __init__(self, service: str) -> None:
        self._formatter = _JsonLines(service)
        self._logger = logging.getLogger(service)
        self._logger.handlers = [h for h in self._logger.handlers if not isinstance(h.formatter, _JsonLines)]
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(self._formatter)
        self._logger.addHandler(handler)
        self._logger.setLevel(
            os.environ.get("POWERTOOLS_LOG_LEVEL", os.environ.get("LOG_LEVEL", "INFO")).upper()
        )
        self._logger.propagate = False
        self._cold = True

    def append_keys(self, **keys: Any) -> None:
        self._formatter.keys.update(keys)

    def info(self, message: str, extra: dict[str, Any] | None = None) -> None:
        self._logger.info(message, extra=extra, stacklevel=2)

    def inject_lambda_context(self, handler: Handler) -> Handler:
        """Give every line of an invocation its context's keys; keys appended in one invocation
        do not leak into the next."""

        @functools.wraps(handler)
        def wrapped(event: Any, context: Any) -> Any:
            self._formatter.keys = {
                "cold_start": self._cold,
                "function_name": getattr(context, "function_name", None),
                "function_memory_size": getattr(context, "memory_limit_in_mb", None),
                "function_arn": getattr(context, "invoked_function_arn", None),
                "function_request_id": getattr(context, "aws_request_id", None),
            }
            self._cold = False
            return handler(event, context)

        return wrapped  # type: ignore[return-value]


class MetricUnit:
    Count = "Count"
    Seconds = "Seconds"


class Metrics:
    """CloudWatch metrics in the embedded metric format: one JSON document on stdout per invocation,
    in ``POWERTOOLS_METRICS_NAMESPACE``, with the ``service`` dimension and any added ones."""

    def __init__(self) -> None:
        self.namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "syncback")
        self.service = os.environ.get("POWERTOOLS_SERVICE_NAME", "syncback")
        self._dimensions: dict[str, str] = {}
        self._metrics: dict[str, tuple[str, float]] = {}

    def add_dimension(self, name: str, value: str) -> None:
        self._dimensions[name] = value

    def add_metric(self, name: str, unit: str, value: float) -> None:
        self._metrics[name] = (unit, value)

    def document(self) -> dict[str, Any] | None:
        """Return the metrics added so far as one EMF document (None: no metric)."""
        if not self._metrics:
            return None
        dimensions = {"service": self.service, **self._dimensions}
        return {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [list(dimensions)],
                        "Metrics": [
                            {"Name": name, "Unit": unit} for name, (unit, _) in self._metrics.items()
                        ],
                    }
                ],
            },
            **dimensions,
            **{name: value for name, (_, value) in self._metrics.items()},
        }

    def log_metrics(self, handler: Handler) -> Handler:
        """Write the invocation's metrics when the handler returns or raises, then start afresh."""

        @functools.wraps(handler)
        def wrapped(event: Any, context: Any) -> Any:
            try:
                return handler(event, context)
            finally:
                document = self.document()
                self._dimensions, self._metrics = {}, {}
                if document is not None:
                    print(json.dumps(document), flush=True)

        return wrapped  # type: ignore[return-value]
