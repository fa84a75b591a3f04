"""syncback status (every sync, its last run, its open alerts) and syncback dbt exposures."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncback.cli import main
from syncback.sandbox.hubspot import Faults, HubSpotSandbox
from syncback.spec import load_project
from syncback.state import LocalStateStore, RunRecord
from syncback.status import open_alerts
from tests.conftest import BASE_SYNC, contacts_rows, write_contacts, write_project


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubSpotSandbox]:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    with HubSpotSandbox(token="t", requests_per_window=None) as server:
        yield server


def project(root: Path, sandbox: HubSpotSandbox, **sync: Any) -> Path:
    destination = {**BASE_SYNC["destination"], "base_url": sandbox.url}
    spec = {
        **BASE_SYNC,
        "destination": destination,
        "owner": "growth@acme.com",
        "schedule": "rate(1 hour)",
        **sync,
    }
    return write_project(root, spec, contacts_rows(10))


def status(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]]]:
    code = main(["--project", str(root), "status", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_status_shows_each_sync_its_last_run_and_the_alerts_that_hold(
    tmp_path: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    alerts = {"max_rejected_pct": 5, "max_invalid_pct": 5, "max_hours_without_success": 24}
    root = project(tmp_path, sandbox, alerts=alerts, guards={"max_invalid_pct": 50})
    # Given a sync never run: Then it has no run, and no successful run is an alert
    code, found = status(root, capsys)
    assert code == 1 and found[0]["last_run"] is None
    assert found[0]["alerts"] == ["no successful run yet (alert after 24 hours)"]
    # When a run rejects 2 of 10 and 1 of 11 rows is invalid
    sandbox.set_faults(Faults(reject_values={"user3@example.com", "user4@example.com"}))
    write_contacts(root / "wh.duckdb", [*contacts_rows(10), (11, None, "x", 1, None)])
    main(["--project", str(root), "run", "contacts"])
    capsys.readouterr()
    code, found = status(root, capsys)
    run = found[0]["last_run"]
    assert (found[0]["owner"], found[0]["schedule"], run["status"], run["rejected"]) == (
        "growth@acme.com",
        "rate(1 hour)",
        "partial",
        2,
    )
    assert code == 1 and found[0]["alerts"] == [
        "20.0% of the last run's records rejected (alert above 5%)",
        "9.1% of the model's rows invalid (alert above 5%)",
    ]
    # When the cause is gone: Then the alerts recover
    sandbox.set_faults(Faults())
    write_contacts(root / "wh.duckdb", contacts_rows(10))
    main(["--project", str(root), "run", "contacts"])
    capsys.readouterr()
    code, found = status(root, capsys)
    assert code == 0 and found[0]["alerts"] == [] and found[0]["last_run"]["status"] == "succeeded"
    # and the screen shows it in one line a sync
    assert main(["--project", str(root), "status"]) == 0
    screen = capsys.readouterr().out
    assert "contacts" in screen and "growth@acme.com" in screen and "succeeded" in screen
    assert screen.strip().endswith("1 sync(s), 0 open alert(s)")


def test_a_failed_run_and_a_stale_success_are_alerts(tmp_path: Path, sandbox: HubSpotSandbox) -> None:
    root = project(tmp_path, sandbox, alerts={"max_hours_without_success": 6})
    sync = load_project(root).sync("contacts")
    now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
    ok = RunRecord(
        "contacts", "r1", "succeeded", "2026-11-30T02:00:00+00:00", finished_at="2026-11-30T02:01:00+00:00"
    )
    failed = RunRecord("contacts", "r2", "failed", "2026-11-30T11:00:00+00:00", error="ModelError: no table")
    assert open_alerts(sync, [failed, ok], now) == [
        "the last run failed: ModelError: no table",
        "the last successful run ended 10.0 hours ago (alert after 6 hours)",
    ]
    quiet = sync.model_copy(update={"alerts": sync.alerts.model_copy(update={"on_failure": False})})
    assert open_alerts(quiet, [failed, ok], now) == [
        "the last successful run ended 10.0 hours ago (alert after 6 hours)"
    ]
    assert LocalStateStore(root / ".syncback").runs() == []


def test_dbt_exposures_name_each_sync_its_owner_and_the_model_it_reads(
    tmp_path: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, sandbox)
    (root / "syncs" / "scores.yaml").write_text(
        yaml.safe_dump(
            {
                **{k: v for k, v in BASE_SYNC.items() if k != "table"},
                "name": "scores",
                "owner": "data team",
                "model": "select c.*, s.score from analytics.contacts c join analytics.scores s using (customer_id)",
            }
        )
    )
    out = tmp_path / "models" / "syncback_exposures.yml"
    out.parent.mkdir()
    assert main(["--project", str(root), "dbt", "exposures", "--out", str(out)]) == 0
    document = yaml.safe_load(out.read_text())
    contacts, scores = document["exposures"]
    assert document["version"] == 2
    assert (contacts["name"], contacts["type"], contacts["owner"]) == (
        "syncback_contacts",
        "application",
        {"email": "growth@acme.com"},
    )
    assert contacts["depends_on"] == ["ref('contacts')"] and contacts["maturity"] == "high"
    assert contacts["meta"]["syncback"]["fields"] == ["email", "firstname", "lead_score", "ltv", "source"]
    # a SELECT over two tables names no dependency: which are dbt models cannot be told
    assert scores["owner"] == {"name": "data team"} and "depends_on" not in scores
