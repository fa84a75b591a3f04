"""Trouble that is not about records stops the run at once, says why, and keeps what was done.

Through the CLI (exit codes, the run history) against the HubSpot sandbox and the webhook receiver
over loopback: systemic refusals, Ctrl-C and SIGTERM, failures before and after delivery, a DuckDB
file another process holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncback.sandbox.hubspot import Faults, HubSpotSandbox
from syncback.state import LocalStateStore
from tests.conftest import BASE_SYNC, contacts_rows, run_json, write_project
from tests.fakes.webhook_receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox(token="t", requests_per_window=None) as server:
        yield server


def hubspot_project(root: Path, sandbox: HubSpotSandbox, rows: int, **destination: Any) -> Path:
    spec = {
        **BASE_SYNC,
        "destination": {**BASE_SYNC["destination"], "base_url": sandbox.url, **destination},
        "batch_size": 100,
    }
    return write_project(root, spec, contacts_rows(rows))


def history(project: Path) -> list[Any]:
    return LocalStateStore(project / ".syncback").runs("contacts")


# ---- systemic refusals ---------------------------------------------------------------------------


def test_a_wrong_object_type_fails_the_run_in_a_few_requests_blaming_no_record(
    tmp_path: Path,
    sandbox: HubSpotSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    # Given 300 contacts for an object type the portal does not have
    project = hubspot_project(tmp_path, sandbox, 300, object="contactz")
    # When the sync runs
    code, summary = run_json(project, capsys)
    # Then it fails (exit 3) naming the cause and the field, in at most 10 requests, with no dead letter
    assert code == 3 and summary["status"] == "failed"
    assert "Unable to infer object type" in summary["error"] and "destination.object" in summary["error"]
    assert sandbox.stats()["requests"] <= 10
    assert summary["rejected"] == 0 and summary["undelivered"] == 300
    assert LocalStateStore(project / ".syncback").dead_letters("contacts") == []


def test_a_property_hubspot_does_not_have_names_the_mapping_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    known = {"email", "firstname", "lead_score", "source"}  # no "ltv"
    with HubSpotSandbox(token="t", requests_per_window=None, known_properties={"contacts": known}) as sandbox:
        project = hubspot_project(tmp_path, sandbox, 150)
        code, summary = run_json(project, capsys)
    assert code == 3 and "no property 'ltv'" in summary["error"] and "mapping.ltv" in summary["error"]
    assert summary["rejected"] == 0 and sandbox.stats()["requests"] <= 4


@pytest.mark.parametrize("status", [404, 405, 301])
def test_a_webhook_url_that_takes_no_post_fails_the_run_in_a_few_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    with WebhookReceiver() as receiver:
        receiver.fail_next(status, n=1000, headers={"Location": receiver.url + "/elsewhere?token=s3cr3t"})
        spec = {
            **BASE_SYNC,
            "destination": {"type": "webhook", "url": receiver.url + "?token=s3cr3t", "batch_size": 10},
            "batch_size": 10,
        }
        write_project(tmp_path, spec, contacts_rows(120))
        code, summary = run_json(tmp_path, capsys)
        assert code == 3 and "destination.url" in summary["error"] and "s3cr3t" not in summary["error"]
        assert receiver.requests <= 10 and summary["rejected"] == 0


def test_a_refusal_no_split_can_pin_on_a_record_is_systemic_within_a_request_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    with WebhookReceiver() as receiver:
        # every request refused the same way (a 413 no halving cures, a 400 for everything)
        receiver.fail_next(413, n=1000)
        spec = {**BASE_SYNC, "destination": {"type": "webhook", "url": receiver.url, "batch_size": 50}}
        write_project(tmp_path, spec, contacts_rows(50))
        code, summary = run_json(tmp_path, capsys)
        assert code == 3 and "refused the same way" in summary["error"] and summary["rejected"] == 0
        assert receiver.requests <= 7


def test_one_bad_record_is_still_found_by_splitting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    with WebhookReceiver() as receiver:
        receiver.reject_batch_if_key_in = {"17"}
        spec = {**BASE_SYNC, "destination": {"type": "webhook", "url": receiver.url, "batch_size": 50}}
        write_project(tmp_path, spec, contacts_rows(50))
        code, summary = run_json(tmp_path, capsys)
        assert code == 1 and summary["rejected"] == 1 and summary["delivered"] == 49


# ---- every run is in the history --------------------------------------------------------------------


def test_a_missing_secret_is_a_failed_run_in_the_history(
    tmp_path: Path,
    sandbox: HubSpotSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HUBSPOT_TOKEN", raising=False)
    project = hubspot_project(tmp_path, sandbox, 5)
    code, summary = run_json(project, capsys)
    assert code == 2 and "HUBSPOT_TOKEN" in summary["error"]
    (run,) = history(project)
    assert run.status == "failed" and "HUBSPOT_TOKEN is not set" in (run.error or "")


def test_an_empty_env_secret_says_it_is_empty(
    tmp_path: Path,
    sandbox: HubSpotSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "")
    project = hubspot_project(tmp_path, sandbox, 5)
    code, summary = run_json(project, capsys)
    assert code == 2 and "HUBSPOT_TOKEN is set but empty" in summary["error"]


def test_a_commit_that_fails_is_recorded_and_the_next_run_commits_what_was_delivered(
    tmp_path: Path,
    sandbox: HubSpotSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import syncback.snapshot as snapshot_module
    from syncback.errors import WarehouseUnavailable

    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    project = hubspot_project(tmp_path, sandbox, 120)

    def broken(*args: Any, **kwargs: Any) -> int:
        raise WarehouseUnavailable("the warehouse went away")

    monkeypatch.setattr(snapshot_module, "_merge", broken)
    code, summary = run_json(project, capsys)
    assert code == 3 and "went away" in summary["error"]
    assert history(project)[0].status == "failed" and sandbox.stats()["requests"] == 2
    monkeypatch.undo()
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    # When the warehouse is back, the next run commits the first one, then finds nothing to send
    code, summary = run_json(project, capsys)
    assert code == 0 and summary["planned"]["unchanged"] == 120 and sandbox.stats()["requests"] == 2
    recovered = [r for r in history(project) if r.delivered == 120]
    assert recovered and "RunInterrupted" in (recovered[0].error or "")


# ---- Ctrl-C and SIGTERM ------------------------------------------------------------------------------


def cli(project: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HUBSPOT_TOKEN": "t"}
    return subprocess.Popen(
        [sys.executable, "-m", "syncback.cli", "--project", str(project), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_within_seconds_commits_what_was_delivered_and_is_recorded_cancelled(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # Given a slow destination (every request takes 0.3 s) and 2,000 contacts: a long run
    with HubSpotSandbox(
        token="t", requests_per_window=None, faults=Faults(slow_rate=1.0, slow_seconds=0.3)
    ) as sandbox:
        project = hubspot_project(tmp_path, sandbox, 2_000, concurrency=2)
        process = cli(project, "run", "contacts", "--json")
        while sandbox.stats()["inputs"] < 300:
            time.sleep(0.05)
        # When it is interrupted
        stopped_at = time.monotonic()
        process.send_signal(sig)
        out, err = process.communicate(timeout=20)
        took = time.monotonic() - stopped_at
        # Then it stops within seconds, as cancelled (exit 130), committing what was delivered
        summary = json.loads(out)
        assert process.returncode == 130 and summary["status"] == "cancelled", (summary["error"], err)
        assert took < 2.5, took
        sent = sandbox.stats()["created"]
        assert 0 < summary["delivered"] <= sent < 2_000
        assert summary["delivered"] + summary["undelivered"] == 2_000
        # and the next run sends only the rest
        sandbox.set_faults(Faults())
        again = cli(project, "run", "contacts", "--json")
        out, _ = again.communicate(timeout=60)
        second = json.loads(out)
        assert second["planned"]["added"] == 2_000 - summary["delivered"]
        assert sandbox.stats()["created"] == 2_000


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    with HubSpotSandbox(
        token="t", requests_per_window=None, faults=Faults(slow_rate=1.0, slow_seconds=3)
    ) as sandbox:
        project = hubspot_project(tmp_path, sandbox, 400, concurrency=1)
        process = cli(project, "run", "contacts")
        while sandbox.stats()["requests"] < 1:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
        assert process.returncode == 130 and time.monotonic() - stopped_at < 1.0


# ---- one DuckDB file, two processes ------------------------------------------------------------------


def test_a_duckdb_file_another_process_holds_fails_before_sending_naming_the_process(
    tmp_path: Path,
    sandbox: HubSpotSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    project = hubspot_project(tmp_path, sandbox, 10)
    config = yaml.safe_load((project / "syncback.yaml").read_text())
    config["warehouses"]["local"]["lock_wait_s"] = 0.5
    (project / "syncback.yaml").write_text(yaml.safe_dump(config))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,time; c=duckdb.connect({str(project / 'wh.duckdb')!r}); print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, summary = run_json(project, capsys)
    finally:
        holder.kill()
    assert code == 3 and f"PID {holder.pid}" in summary["error"] and "Nothing was sent" in summary["error"]
    assert sandbox.stats()["requests"] == 0


def test_two_syncs_on_one_duckdb_file_at_once_both_complete(tmp_path: Path, sandbox: HubSpotSandbox) -> None:
    project = hubspot_project(tmp_path, sandbox, 300)
    other = yaml.safe_load((project / "syncs" / "contacts.yaml").read_text())
    other["name"] = "contacts_copy"
    other["destination"]["object"] = "companies"
    other["destination"]["id_property"] = "domain"
    other["mapping"] = {"domain": "email", "name": "first_name"}
    (project / "syncs" / "contacts_copy.yaml").write_text(yaml.safe_dump(other))
    first, second = cli(project, "run", "contacts", "--json"), cli(project, "run", "contacts_copy", "--json")
    results = [json.loads(p.communicate(timeout=60)[0]) for p in (first, second)]
    assert [r["status"] for r in results] == ["succeeded", "succeeded"], results
    assert len(sandbox.objects("contacts")) == 300 and len(sandbox.objects("companies")) == 300


# ---- invalid rows are not silent ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "guard", "code", "status"),
    [
        ([(i, None, "x", 1, 1.0) for i in range(1, 6)], None, 3, "failed"),  # every row invalid
        (
            [*contacts_rows(8), (9, None, "x", 1, 1.0), (10, None, "y", 1, 1.0)],
            None,
            1,
            "partial",
        ),  # 20% > 0%
        (
            [*contacts_rows(8), (9, None, "x", 1, 1.0), (10, None, "y", 1, 1.0)],
            25,
            0,
            "succeeded",
        ),  # 20% <= 25%
    ],
)
def test_invalid_rows_count_toward_the_runs_status(
    tmp_path: Path,
    sandbox: HubSpotSandbox,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    rows: list[tuple[Any, ...]],
    guard: float | None,
    code: int,
    status: str,
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    spec: dict[str, Any] = {**BASE_SYNC, "destination": {**BASE_SYNC["destination"], "base_url": sandbox.url}}
    if guard is not None:
        spec["guards"] = {"max_invalid_pct": guard}
    write_project(tmp_path, spec, rows)
    got, summary = run_json(tmp_path, capsys)
    assert (got, summary["status"]) == (code, status), summary
    if status != "succeeded":
        assert "InvalidRows" in summary["error"]


def test_a_rejection_that_names_its_record_by_value_keeps_hubspots_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    faults = Faults(reject_values={"user7@example.com"}, errors_without_trace=True)
    with HubSpotSandbox(token="t", requests_per_window=None, faults=faults) as sandbox:
        project = hubspot_project(tmp_path, sandbox, 20)
        code, summary = run_json(project, capsys)
    assert code == 1 and summary["rejected"] == 1
    (letter,) = LocalStateStore(project / ".syncback").dead_letters("contacts")
    assert (
        letter.key == "7"
        and letter.reason.startswith("VALIDATION_ERROR")
        and "acknowledge" not in letter.reason
    )
