"""The handlers' JSON log lines and EMF metrics: the shapes CloudWatch and Powertools users read."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from syncback.telemetry import LambdaLogger, Metrics, MetricUnit
from tests.integration.sfn_harness import FakeContext


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_log_line_has_the_invocations_keys_its_appended_keys_and_its_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-abc-def;Parent=1;Sampled=0")
    logger = LambdaLogger(service="syncback-test")

    @logger.inject_lambda_context
    def handler(event: dict[str, Any], context: Any) -> None:
        logger.append_keys(sync=event["sync"])
        logger.info("planned", extra={"changes": 3})
        logging.getLogger("syncback-test").warning("from the engine")

    handler({"sync": "contacts"}, FakeContext("syncback-dev-plan", aws_request_id="r-1"))
    handler({"sync": "people"}, FakeContext("syncback-dev-plan", aws_request_id="r-2"))
    first, engine, second, _ = lines(capsys)
    assert first["message"] == "planned" and first["level"] == "INFO" and first["service"] == "syncback-test"
    assert first["changes"] == 3 and first["sync"] == "contacts" and first["cold_start"] is True
    assert first["function_name"] == "syncback-dev-plan" and first["function_request_id"] == "r-1"
    assert first["xray_trace_id"] == "1-abc-def" and first["location"].startswith("handler:")
    assert engine["level"] == "WARNING" and engine["sync"] == "contacts" and "changes" not in engine
    # the next invocation is warm, and keys from the last one do not leak into it
    assert second["cold_start"] is False and second["sync"] == "people"


def test_a_logged_exception_carries_its_name_and_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    LambdaLogger(service="syncback-test")
    try:
        raise KeyError("batch")
    except KeyError:
        logging.getLogger("syncback-test").exception("failed")
    (line,) = lines(capsys)
    assert line["exception_name"] == "KeyError" and "raise KeyError" in line["exception"]


def test_making_a_logger_twice_does_not_write_each_line_twice(capsys: pytest.CaptureFixture[str]) -> None:
    LambdaLogger(service="syncback-test")
    LambdaLogger(service="syncback-test").info("once")
    assert len(lines(capsys)) == 1


def test_metrics_are_one_emf_document_an_invocation_written_even_when_it_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "syncback-ns")
    metrics = Metrics()

    @metrics.log_metrics
    def handler(event: dict[str, Any], context: Any) -> None:
        metrics.add_dimension("sync", "contacts")
        metrics.add_metric("batch_delivered", MetricUnit.Count, 99)
        metrics.add_metric("run_duration", MetricUnit.Seconds, 1.5)
        if event.get("fail"):
            raise RuntimeError("boom")

    handler({}, None)
    with pytest.raises(RuntimeError):
        handler({"fail": True}, None)
    first, second = lines(capsys)
    (directive,) = first["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "syncback-ns" and directive["Dimensions"] == [["service", "sync"]]
    assert directive["Metrics"] == [
        {"Name": "batch_delivered", "Unit": "Count"},
        {"Name": "run_duration", "Unit": "Seconds"},
    ]
    assert first["batch_delivered"] == 99 and first["sync"] == "contacts" and first["service"] == "syncback"
    assert second["run_duration"] == 1.5


def test_an_invocation_that_adds_no_metric_writes_no_document(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = Metrics()
    metrics.log_metrics(lambda event, context: None)({}, None)
    assert capsys.readouterr().out == ""
