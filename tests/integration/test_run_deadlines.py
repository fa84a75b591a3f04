"""A run that cannot finish keeps its progress: the next run continues, and re-sends nothing.

Locally through ``max_changes_per_run``; on AWS through the run's deadline (the execution timeout
less the time Commit needs), in the real ASL in moto.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from syncback.destinations.base import Change, Outcome
from syncback.sandbox.hubspot import HubSpotSandbox
from tests.conftest import BASE_SYNC, ProjectFactory, contacts_rows, write_project
from tests.fakes.recording import RecordingDestination
from tests.integration.sfn_harness import build_stack, mocked_aws


def test_a_capped_run_commits_what_it_sent_and_the_next_runs_continue_without_resending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncback.cli import main

    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    with HubSpotSandbox(token="t", requests_per_window=None) as sandbox:
        spec = {
            **BASE_SYNC,
            "destination": {**BASE_SYNC["destination"], "base_url": sandbox.url},
            "batch_size": 50,
            "max_changes_per_run": 100,
        }
        write_project(tmp_path, spec, contacts_rows(250))
        summaries = []
        for _ in range(3):
            main(["--project", str(tmp_path), "run", "contacts", "--json"])
        from syncback.state import LocalStateStore

        summaries = list(reversed(LocalStateStore(tmp_path / ".syncback").runs("contacts")))
        assert [(r.delivered, r.undelivered, r.status) for r in summaries] == [
            (100, 150, "partial"),
            (100, 50, "partial"),
            (50, 0, "succeeded"),
        ]
        # every record was sent exactly once
        assert sandbox.stats()["inputs"] == 250 and sandbox.stats()["created"] == 250


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from mocked_aws(monkeypatch)


class Slow(RecordingDestination):
    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        time.sleep(0.4)
        return super().write(changes, scope)


def test_a_run_past_its_deadline_on_aws_commits_what_it_delivered_and_the_next_continues(
    aws: None, make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(rows=contacts_rows(500))
    destination = Slow(max_batch_size=50)
    stack = build_stack(project, lambda sync: destination, monkeypatch)
    # Given an execution timeout that leaves about a second for delivering (the rest is Commit's)
    monkeypatch.setattr(
        stack.handlers["plan"],
        "SETTINGS",
        stack.handlers["plan"].SETTINGS.model_copy(update={"run_timeout_s": 301.5}),
    )
    execution = stack.run(timeout_s=120)
    # Then the run ends partial, not failed: what was delivered is committed
    assert execution["status"] == "SUCCEEDED", execution
    first: dict[str, Any] = json.loads(execution["output"])["run"]
    assert first["status"] == "partial" and 0 < first["delivered"] < 500
    assert first["delivered"] + first["undelivered"] == 500
    # When the next run has time: Then it sends only the rest, nothing twice
    monkeypatch.setattr(
        stack.handlers["plan"],
        "SETTINGS",
        stack.handlers["plan"].SETTINGS.model_copy(update={"run_timeout_s": 7200}),
    )
    second = json.loads(stack.run(timeout_s=120)["output"])
    assert second["plan"]["changes"] == first["undelivered"] and second["run"]["status"] == "succeeded"
    sent = [key for request in destination.requests for key in request]
    assert len(sent) == len(set(sent)) == 500
