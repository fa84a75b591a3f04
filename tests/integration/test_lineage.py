"""OpenLineage run events (``lineage:`` in syncback.yaml): a start and an end per run, the model's
tables in, the destination's object out, names and counts only; to a file or an HTTP endpoint,
and a run never fails because the endpoint does."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncback.cli import main
from syncback.errors import ConfigError
from syncback.lineage import run_id
from syncback.sandbox.hubspot import HubSpotSandbox
from syncback.spec import load_project
from tests.conftest import BASE_SYNC, contacts_rows, write_project
from tests.fakes.loopback import Answer, LoopbackServer
from tests.fakes.recording import RecordingDestination
from tests.integration.sfn_harness import build_stack, mocked_aws


class LineageEndpoint(LoopbackServer):
    """An OpenLineage endpoint: keeps what is POSTed to /api/v1/lineage, or answers ``status``."""

    def __init__(self, status: int = 201) -> None:
        super().__init__()
        self.status = status
        self.events: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        if method != "POST" or target != "/api/v1/lineage":
            return 404, {}, b""
        with self._lock:
            self.headers.append(headers)
            if self.status < 300:
                self.events.append(json.loads(body))
        return self.status, {"Content-Type": "application/json"}, b"{}"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from mocked_aws(monkeypatch)


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubSpotSandbox]:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    monkeypatch.setenv("LINEAGE_KEY", "lk-123")
    with HubSpotSandbox(token="t", requests_per_window=None) as server:
        yield server


def project(root: Path, sandbox: HubSpotSandbox, lineage: dict[str, Any], **sync: Any) -> Path:
    destination = {**BASE_SYNC["destination"], "base_url": sandbox.url}
    write_project(
        root, {**BASE_SYNC, "destination": destination, "owner": "growth@acme.com", **sync}, contacts_rows(10)
    )
    config = yaml.safe_load((root / "syncback.yaml").read_text())
    (root / "syncback.yaml").write_text(yaml.safe_dump({**config, "lineage": lineage}))
    return root


def test_a_run_writes_its_start_and_its_end_with_the_model_in_and_the_destination_out(
    tmp_path: Path, sandbox: HubSpotSandbox
) -> None:
    # Given a project whose lineage goes to a file
    root = project(tmp_path, sandbox, {"file": "lineage.jsonl", "namespace": "acme"})
    # When a sync runs
    assert main(["--project", str(root), "run", "contacts"]) == 0
    # Then the file holds its START and its COMPLETE, one run id, one job
    lines = (root / "lineage.jsonl").read_text().splitlines()
    start, end = (json.loads(line) for line in lines)
    assert [start["eventType"], end["eventType"]] == ["START", "COMPLETE"]
    assert start["run"]["runId"] == end["run"]["runId"]
    assert end["job"] == {**end["job"], "namespace": "acme", "name": "contacts"}
    assert end["job"]["facets"]["ownership"]["owners"] == [{"name": "growth@acme.com"}]
    assert end["job"]["facets"]["sql"]["query"] == "select * from analytics.contacts"
    # the model's table in, the destination's object out, with the fields sent and how many records
    assert [(d["namespace"], d["name"]) for d in end["inputs"]] == [
        (f"duckdb://{(root / 'wh.duckdb').resolve()}", "analytics.contacts")
    ]
    (output,) = end["outputs"]
    assert output["namespace"].startswith("hubspot://") and output["name"] == "contacts"
    assert [f["name"] for f in output["facets"]["schema"]["fields"]] == list(BASE_SYNC["mapping"])
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 10
    assert "outputStatistics" not in start["outputs"][0].get("outputFacets", {})
    # names and counts only: not one value of the model leaves in an event
    text = (root / "lineage.jsonl").read_text()
    for row in contacts_rows(10):
        assert not any(str(value) in text for value in row[1:3]), row


def test_a_failed_run_ends_in_a_fail_event_with_the_same_run_id(
    tmp_path: Path, sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sync whose destination refuses our credentials
    root = project(tmp_path, sandbox, {"file": "lineage.jsonl"})
    monkeypatch.setenv("HUBSPOT_TOKEN", "a-revoked-token")
    # When it runs, Then it fails, and its end is a FAIL event of the run that started
    assert main(["--project", str(root), "run", "contacts"]) != 0
    events = [json.loads(line) for line in (root / "lineage.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in events][-1] == "FAIL"
    assert len({e["run"]["runId"] for e in events}) == 1


def test_events_are_posted_to_an_endpoint_with_its_key(tmp_path: Path, sandbox: HubSpotSandbox) -> None:
    with LineageEndpoint() as endpoint:
        root = project(tmp_path, sandbox, {"url": endpoint.url, "api_key": "env:LINEAGE_KEY"})
        assert main(["--project", str(root), "run", "contacts"]) == 0
    assert [e["eventType"] for e in endpoint.events] == ["START", "COMPLETE"]
    assert {h["authorization"] for h in endpoint.headers} == {"Bearer lk-123"}


def test_an_endpoint_that_fails_never_fails_the_run(
    tmp_path: Path, sandbox: HubSpotSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    with LineageEndpoint(status=500) as endpoint:
        root = project(tmp_path, sandbox, {"url": endpoint.url})
        assert main(["--project", str(root), "run", "contacts"]) == 0
    assert endpoint.headers  # it was asked (and retried), and refused
    assert "lineage event not sent" in caplog.text
    assert len(sandbox.objects("contacts")) == 10


def test_on_aws_plan_sends_the_start_and_commit_the_end(
    aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a project with lineage, deployed: its runs go through the state machine
    root = write_project(tmp_path, BASE_SYNC, contacts_rows(5))
    config = yaml.safe_load((root / "syncback.yaml").read_text())
    (root / "syncback.yaml").write_text(yaml.safe_dump({**config, "lineage": {"file": "lineage.jsonl"}}))
    stack = build_stack(load_project(root), lambda sync: RecordingDestination(), monkeypatch)
    # When a run goes through
    execution = stack.run()
    assert execution["status"] == "SUCCEEDED"
    # Then the Plan function sent its start, and the Commit function its end, of one run
    events = [json.loads(line) for line in (root / "lineage.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    run = json.loads(execution["output"])["plan"]["run_id"]
    assert {e["run"]["runId"] for e in events} == {run_id("contacts", run)}
    assert events[1]["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 5


def test_the_run_id_is_a_uuid_the_same_for_a_run_wherever_its_events_come_from() -> None:
    assert run_id("contacts", "20261130T000000Z-abcdef") == run_id("contacts", "20261130T000000Z-abcdef")
    assert run_id("contacts", "20261130T000000Z-abcdef") != run_id("people", "20261130T000000Z-abcdef")
    assert len(run_id("contacts", "r")) == 36


@pytest.mark.parametrize(
    ("lineage", "words"),
    [
        ({"url": "https://ol.example.com", "file": "x.jsonl"}, "give url (an OpenLineage endpoint) or file"),
        ({}, "give url (an OpenLineage endpoint) or file"),
        ({"file": "x.jsonl", "api_key": "env:K"}, "api_key goes with url"),
        (
            {"url": "https://ol.example.com", "api_key": "plain-token"},
            "secrets are never written in the file",
        ),
    ],
)
def test_a_wrong_lineage_block_is_named_with_its_file_and_field(
    tmp_path: Path, sandbox: HubSpotSandbox, lineage: dict[str, Any], words: str
) -> None:
    root = project(tmp_path, sandbox, lineage)
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    message = str(caught.value)
    assert "syncback.yaml: lineage" in message and words in message, message
