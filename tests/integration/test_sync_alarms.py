"""Each sync's CloudWatch alarms (infra/render_schedules.py): one per alert its spec asks for, on the
metrics the Commit function publishes for it, telling the project's topic when it fires and when it
recovers, and agreeing with what ``syncback status`` shows."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncback.errors import ConfigError
from syncback.spec import SyncSpec
from syncback.state import RunRecord
from syncback.status import open_alerts
from syncback.steps import run_metrics
from tests.conftest import BASE_SYNC, ProjectFactory, contacts_rows
from tests.fakes.recording import RecordingDestination
from tests.integration.sfn_harness import build_stack, mocked_aws

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra"))
import render_schedules  # noqa: E402

sys.path.remove(str(ROOT / "infra"))

ALERTS = {"max_rejected_pct": 5, "max_invalid_pct": 2, "max_hours_without_success": 25.5}
SYNC = SyncSpec.model_validate({**BASE_SYNC, "owner": "growth@acme.com", "alerts": ALERTS})


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from mocked_aws(monkeypatch)


def properties(alarms: dict[str, Any], kind: str) -> dict[str, Any]:
    return dict(alarms[f"AlarmContacts{kind}"]["Properties"])


def evaluate(alarm: dict[str, Any], published: dict[str, float]) -> float | None:
    """Return what CloudWatch computes for ``alarm`` from one run's published figures (None: no value)."""
    values = {
        m["Id"]: published[m["MetricStat"]["Metric"]["MetricName"]]
        for m in alarm["Metrics"]
        if "MetricStat" in m
    }
    shown = next(m for m in alarm["Metrics"] if m["ReturnData"])
    if "MetricStat" in shown:
        return values[shown["Id"]]
    numerator, denominator = re.fullmatch(r"100 \* (\w+) / \((.*)\)", shown["Expression"]).groups()  # type: ignore[union-attr]
    whole = sum(values[i.strip()] for i in denominator.split("+"))
    return None if whole == 0 else 100 * values[numerator] / whole  # CloudWatch drops a division by 0


def test_every_alert_a_sync_asks_for_is_an_alarm_naming_the_sync_and_its_owner() -> None:
    alarms = render_schedules.alarms("contacts", SYNC)
    assert set(alarms) == {
        "AlarmContactsFailed",
        "AlarmContactsRejected",
        "AlarmContactsInvalid",
        "AlarmContactsNoSuccess",
    }
    for resource in alarms.values():
        alarm = resource["Properties"]
        assert resource["Type"] == "AWS::CloudWatch::Alarm"
        assert "syncback sync contacts (owner: growth@acme.com)" in alarm["AlarmDescription"]
        # once when it fires, once when it recovers
        assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": "AlarmTopicArn"}]
    # a run's figures hold until the next run: the alarm keeps its state between runs
    for kind in ("Failed", "Rejected", "Invalid"):
        assert properties(alarms, kind)["TreatMissingData"] == "ignore"
    assert (
        properties(alarms, "Rejected")["Threshold"] == 5 and properties(alarms, "Invalid")["Threshold"] == 2
    )
    # no success for 26 whole hours (25.5 rounded up), an hour without a run counting as one
    quiet = properties(alarms, "NoSuccess")
    assert quiet["EvaluationPeriods"] == quiet["DatapointsToAlarm"] == 26
    assert quiet["TreatMissingData"] == "breaching" and quiet["Metrics"][0]["MetricStat"]["Period"] == 3600


def test_a_sync_that_asks_for_no_alert_still_has_its_failed_run_alarm_unless_it_turns_it_off() -> None:
    assert list(render_schedules.alarms("contacts", SyncSpec.model_validate(BASE_SYNC))) == [
        "AlarmContactsFailed"
    ]
    off = SyncSpec.model_validate({**BASE_SYNC, "alerts": {"on_failure": False}})
    assert render_schedules.alarms("contacts", off) == {}


def test_a_window_longer_than_cloudwatch_looks_back_is_refused_naming_the_file_and_the_field() -> None:
    sync = SyncSpec.model_validate({**BASE_SYNC, "alerts": {"max_hours_without_success": 200}})
    with pytest.raises(ConfigError) as caught:
        render_schedules.alarms("contacts", sync)
    assert "syncs/contacts.yaml: alerts.max_hours_without_success: " in str(caught.value)
    assert "use 168 or less" in str(caught.value)


counts = st.integers(min_value=0, max_value=1000)


@given(
    status=st.sampled_from(["succeeded", "partial", "failed"]),
    delivered=counts,
    rejected=counts,
    skipped=counts,
    undelivered=counts,
    added=counts,
    unchanged=counts,
    invalid=counts,
)
@settings(max_examples=300, deadline=None)
def test_an_alarm_fires_on_a_run_exactly_when_syncback_status_shows_its_alert(
    status: str,
    delivered: int,
    rejected: int,
    skipped: int,
    undelivered: int,
    added: int,
    unchanged: int,
    invalid: int,
) -> None:
    # Given any finished run, as Commit records it and publishes its figures
    now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
    run = RunRecord(
        "contacts",
        "r1",
        status,
        now.isoformat(),
        finished_at=now.isoformat(),
        planned={"added": added, "unchanged": unchanged, "invalid": invalid},
        delivered=delivered,
        rejected=rejected,
        skipped=skipped,
        undelivered=undelivered,
        error="boom" if status == "failed" else None,
    )
    published = run_metrics(run)
    alarms = render_schedules.alarms("contacts", SYNC)
    shown = " | ".join(open_alerts(SYNC, [run], now))
    # Then each alarm is past its threshold exactly when status shows that alert
    for kind, words in (
        ("Failed", "the last run failed"),
        ("Rejected", "records rejected"),
        ("Invalid", "rows invalid"),
    ):
        alarm = properties(alarms, kind)
        value = evaluate(alarm, published)
        fires = value is not None and (
            value >= alarm["Threshold"]
            if alarm["ComparisonOperator"].endswith("OrEqualToThreshold")
            else value > alarm["Threshold"]
        )
        assert fires == (words in shown), (kind, value, shown)


def test_the_alarms_watch_what_the_commit_function_publishes(
    aws: None,
    make_project: ProjectFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a sync with every alert, run through the state machine
    project = make_project(rows=contacts_rows(20), owner="growth@acme.com", alerts=ALERTS)
    destination = RecordingDestination()
    destination.reject_keys = {"3"}
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    assert stack.run()["status"] == "SUCCEEDED"
    # When the Commit function has published the run's metrics (embedded metric format, on stdout)
    documents = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if '"CloudWatchMetrics"' in line
    ]
    commit = next(d for d in documents if "run_failed" in d)
    directive = commit["_aws"]["CloudWatchMetrics"][0]
    published = {m["Name"] for m in directive["Metrics"]}
    # Then every metric each alarm watches is one of them, in the same namespace and dimensions
    for resource in render_schedules.alarms("contacts", project.sync("contacts")).values():
        for query in resource["Properties"]["Metrics"]:
            if "MetricStat" not in query:
                continue
            metric = query["MetricStat"]["Metric"]
            assert metric["Namespace"] == directive["Namespace"]
            assert metric["MetricName"] in published
            assert {d["Name"]: d["Value"] for d in metric["Dimensions"]} == {
                k: commit[k] for k in directive["Dimensions"][0]
            }
    assert commit["rejected"] == 1 and commit["run_succeeded"] == 1 and commit["run_failed"] == 0
