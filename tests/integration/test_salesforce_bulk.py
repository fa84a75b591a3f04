"""Salesforce Bulk API 2.0 for large batches, against the fake: jobs, CSV, unordered results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncback.destinations.base import Change
from syncback.destinations.salesforce.bulk import to_csv
from syncback.spec import load_project
from tests.conftest import contacts_rows, write_contacts
from tests.fakes.salesforce import CLIENT_SECRET, SalesforceFake
from tests.integration.sfn_harness import build_stack, mocked_aws, snapshot
from tests.integration.test_salesforce_destination import contacts, destination, project, run_json


@pytest.fixture
def org(monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceFake]:
    monkeypatch.setenv("SF_SECRET", CLIENT_SECRET)
    with SalesforceFake() as fake:
        yield fake


def bulk_project(root: Path, fake: SalesforceFake, rows: int, **sync: Any) -> Path:
    spec = destination(fake, poll_s=0.02, bulk_above=2000)
    return project(root, fake, rows=rows, batch_size=2500, destination=spec, **sync)


def test_large_batches_go_through_bulk_jobs_and_unordered_results_find_their_records(
    tmp_path: Path, org: SalesforceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = bulk_project(tmp_path, org, rows=5_000)
    org.reject_values = {"user77@example.com"}
    # When the sync runs: Then two ingest jobs (one per batch of 2,500) upsert every record; the
    # refused one is a dead letter with Salesforce's error; each result found its record by external id
    code, summary = run_json(root, capsys)
    assert code == 1 and (summary["delivered"], summary["rejected"]) == (4_999, 1), summary
    assert len(org.bulk_jobs) == 2 and org.counts["created"] == 4_999
    assert summary["rejected_sample"][0]["key"] == "77"
    assert summary["rejected_sample"][0]["reason"].startswith("FIELD_CUSTOM_VALIDATION_EXCEPTION")
    # (each job: create, upload, close, polls, three results: nothing like one request per 200 records)
    assert org.counts["requests"] < 40
    # When 10 rows leave and one changes: Then a delete job and an update job, by Salesforce id
    org.reject_values = set()
    rows = contacts_rows(4_990)
    rows[0] = (1, "new-1@example.com", "Renamed", 99, None)
    write_contacts(root / "wh.duckdb", rows)
    code, summary = run_json(root, capsys)
    assert code == 0 and (summary["planned"]["removed"], summary["planned"]["changed"]) == (10, 1), summary
    held = contacts(org)
    assert len(held) == 4_990 and held["1"]["Email"] == "new-1@example.com" and "77" in held
    operations = sorted(job["spec"]["operation"] for job in org.bulk_jobs.values())
    assert operations == ["delete", "update", "upsert", "upsert", "upsert"]
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["unchanged"] == 4_990


def test_csv_carries_quotes_commas_line_breaks_unicode_and_clears_with_na(
    tmp_path: Path, org: SalesforceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = bulk_project(tmp_path, org, rows=1)
    nasty = 'O\'Brien, "the" \nsecond line\r\n Zoë 🚀 中文'
    write_contacts(
        root / "wh.duckdb", [(1, "a@example.com", nasty, 1, None), (2, "b@example.com", "Plain", 2, None)]
    )
    assert run_json(root, capsys)[0] == 0
    assert contacts(org)["1"]["LastName"] == nasty
    # a null clears the field in Bulk (#N/A), where an empty cell would leave it
    write_contacts(
        root / "wh.duckdb", [(1, "a@example.com", nasty, None, None), (2, "b@example.com", "Plain", 2, None)]
    )
    assert run_json(root, capsys)[0] == 0
    assert contacts(org)["1"]["Lead_Score__c"] is None and contacts(org)["2"]["Lead_Score__c"] == "2"
    sent = to_csv([Change("1", "upsert", "h", {"A": None, "B": True, "C": 'x"y'})], "upsert")
    assert sent == 'A,B,C\n#N/A,true,"x""y"\n'


def test_a_locked_row_in_bulk_is_left_for_the_next_run(
    tmp_path: Path, org: SalesforceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = bulk_project(tmp_path, org, rows=3_000)
    org.lock_values = {"user9@example.com": 1}
    code, summary = run_json(root, capsys)
    assert (summary["delivered"], summary["undelivered"], summary["rejected"]) == (2_999, 1, 0), summary
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["added"] == 1 and len(contacts(org)) == 3_000


def test_a_failed_job_is_submitted_again(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = bulk_project(tmp_path, org, rows=2_100)
    real = org._process
    failed = {"n": 0}

    def fail_first(job: dict[str, Any]) -> None:
        if failed["n"] == 0:
            failed["n"] += 1
            job["state"] = "Failed"
            return
        real(job)

    monkeypatch.setattr(org, "_process", fail_first)
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["delivered"] == 2_100 and len(org.bulk_jobs) == 2


def test_a_bulk_sync_runs_through_the_state_machine_waiting_between_polls(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    org.job_s = 0.5  # a job runs for a second: the state machine waits for it
    for _ in mocked_aws(monkeypatch):
        root = bulk_project(tmp_path, org, rows=5_000)
        stack = build_stack(load_project(root), None, monkeypatch)
        execution = stack.run()
        assert execution["status"] == "SUCCEEDED", execution
        run = json.loads(execution["output"])["run"]
        assert (run["status"], run["delivered"]) == ("succeeded", 5_000)
        assert stack.invocations.count("deliver") >= 4 and len(org.bulk_jobs) == 2
        assert len(snapshot(stack.rt.project)) == 5_000
