"""The CLI end to end against the HubSpot sandbox over loopback: exit codes, summaries, dead letters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncback.cli import main
from syncback.sandbox.hubspot import Faults, HubSpotSandbox
from tests.conftest import BASE_SYNC, contacts_rows, run_json, write_contacts, write_project


@pytest.fixture
def sandbox() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox(token="cli-token") as server:
        yield server


@pytest.fixture
def project(tmp_path: Path, sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HUBSPOT_TOKEN", "cli-token")
    destination = {**BASE_SYNC["destination"], "base_url": sandbox.url}
    spec = {**BASE_SYNC, "destination": destination, "mode": "mirror", "guards": {"max_delete_pct": 20}}
    write_project(tmp_path, spec, contacts_rows(250))
    return tmp_path


def test_rejected_records_exit_1_wait_in_the_dlq_and_go_through_once_fixed(
    project: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given HubSpot rejects two of 250 contacts
    sandbox.set_faults(Faults(reject_values={"user13@example.com", "user77@example.com"}))
    # When the sync runs: Then it exits 1 with the counts adding up
    code, summary = run_json(project, capsys)
    assert code == 1 and summary["status"] == "partial"
    assert summary["planned"] == {"added": 250, "changed": 0, "removed": 0, "unchanged": 0, "invalid": 0}
    assert (summary["delivered"], summary["rejected"], summary["skipped"]) == (248, 2, 0)
    assert {"sync", "run_id", "duration_s"} <= set(summary)
    assert len(sandbox.objects("contacts")) == 248
    # and dlq list shows both with HubSpot's reason
    assert main(["--project", str(project), "dlq", "list", "contacts"]) == 0
    listing = capsys.readouterr().out
    assert (
        "2 dead letter(s)" in listing
        and "13 " in listing
        and "77 " in listing
        and "VALIDATION_ERROR" in listing
    )
    # When the cause is fixed, the next run sends just those two and exits 0
    sandbox.set_faults(Faults())
    code, summary = run_json(project, capsys)
    assert code == 0 and summary["planned"]["added"] == 2 and summary["delivered"] == 2
    # and a further run plans zero changes; the dead letters are gone
    code, summary = run_json(project, capsys)
    assert code == 0 and summary["planned"]["unchanged"] == 250 and summary["delivered"] == 0
    main(["--project", str(project), "dlq", "list", "contacts"])
    assert "0 dead letter(s)" in capsys.readouterr().out


def test_mirror_archives_removed_contacts_in_hubspot(
    project: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    run_json(project, capsys)
    write_contacts(project / "wh.duckdb", contacts_rows(240))
    code, summary = run_json(project, capsys)
    assert code == 0 and summary["planned"]["removed"] == 10 and summary["delivered"] == 10
    assert len(sandbox.objects("contacts")) == 240
    assert len(sandbox.objects("contacts", include_archived=True)) == 250


def test_dlq_replay_delivers_once_the_destination_accepts(
    project: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.set_faults(Faults(reject_values={"user5@example.com"}))
    run_json(project, capsys)
    sandbox.set_faults(Faults())
    assert main(["--project", str(project), "dlq", "replay", "contacts"]) == 0
    assert "delivered 1" in capsys.readouterr().out
    code, summary = run_json(project, capsys)
    assert code == 0 and summary["planned"]["unchanged"] == 250


def test_a_wrong_token_fails_the_run_at_once(
    project: Path,
    sandbox: HubSpotSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "wrong-token")
    code, summary = run_json(project, capsys)
    assert code == 3 and summary["status"] == "failed" and "DestinationAuthError" in str(summary["error"])
    assert sandbox.stats()["requests"] <= 4, "one request per parallel batch at most, and no retries"
    assert sandbox.objects("contacts") == []


def test_a_missing_secret_is_a_configuration_error(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUBSPOT_TOKEN")
    code = main(["--project", str(project), "run", "contacts"])
    assert code == 2 and "environment variable HUBSPOT_TOKEN is not set" in capsys.readouterr().err


def test_validate_exits_2_with_file_field_message(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "syncs" / "broken.yaml").write_text(
        "name: broken\nwarehouse: local\ntable: t\nprimary_key: id\n"
    )
    assert main(["--project", str(project), "validate"]) == 2
    assert "syncs/broken.yaml: destination: required; add it" in capsys.readouterr().err


def test_plan_sends_nothing(
    project: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--project", str(project), "plan", "contacts"]) == 0
    out = capsys.readouterr().out
    assert "added 250" in out and sandbox.stats()["requests"] == 0


def test_runs_lists_history_newest_first(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_json(project, capsys)
    first = run_json(project, capsys)[1]["run_id"]
    main(["--project", str(project), "runs"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(str(first)) and len(lines) == 3


def test_the_human_summary_and_progress(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--project", str(project), "run", "contacts"]) == 0
    captured = capsys.readouterr()
    assert "SUCCEEDED" in captured.out and "delivered 250" in captured.out
    assert "250/250 records" in captured.err


def test_run_json_prints_an_object_even_when_the_run_cannot_start(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUBSPOT_TOKEN")
    code, summary = run_json(project, capsys)
    assert code == 2 and summary["status"] == "failed" and "HUBSPOT_TOKEN" in str(summary["error"])


def test_runs_shows_why_a_run_failed_and_rejects_an_unknown_sync(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "wh.duckdb").unlink()  # the model is gone
    assert main(["--project", str(project), "run", "contacts"]) == 3
    capsys.readouterr()
    main(["--project", str(project), "runs", "contacts"])
    assert "failed" in (out := capsys.readouterr().out) and "ModelError" in out
    assert main(["--project", str(project), "runs", "nosuch"]) == 2
