"""Under the faults real APIs create, nothing is lost, nothing is created twice, and runs converge.

The sandbox answers 10% of requests 429, 5% 5xx, 1% times out (after writing!) or resets the
connection, and rejects 2% of the records; 20,000 rows go through the local runner.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncback.batches import LocalBatchStore
from syncback.delivery import RetryPolicy
from syncback.runner import Runtime, commit_run, deliver_batch, new_run_id, plan_run, run_sync
from syncback.sandbox.hubspot import Faults, HubSpotSandbox
from syncback.spec import load_project
from syncback.state import LocalStateStore, RunRecord
from tests.conftest import BASE_SYNC, contacts_rows, write_contacts

ROWS = 20_000
FAULTS = Faults(
    rate_429=0.10, rate_5xx=0.05, rate_timeout=0.005, rate_reset=0.005, timeout_seconds=0.6, seed=11
)
PATIENT = RetryPolicy(attempts=10, base_s=0.01, cap_s=0.2)


@pytest.fixture
def sandbox() -> Iterator[HubSpotSandbox]:
    # a short window so that an injected 429's "wait one interval" is short too
    with HubSpotSandbox(token="t", requests_per_window=10_000, window_seconds=0.2) as server:
        yield server


def make_runtime(
    tmp_path: Path, sandbox: HubSpotSandbox, rows: list[tuple[Any, ...]], **spec: Any
) -> Runtime:
    (tmp_path / "syncs").mkdir(exist_ok=True)
    (tmp_path / "syncback.yaml").write_text(
        yaml.safe_dump(
            {
                "warehouses": {"local": {"type": "duckdb", "path": "wh.duckdb"}},
                "state": {"warehouse": "local"},
            }
        )
    )
    destination = {**BASE_SYNC["destination"], "base_url": sandbox.url, "timeout_s": 0.3, "concurrency": 4}
    (tmp_path / "syncs" / "contacts.yaml").write_text(
        yaml.safe_dump({**BASE_SYNC, "destination": destination, "batch_size": 1000, **spec})
    )
    write_contacts(tmp_path / "wh.duckdb", rows)
    project = load_project(tmp_path)
    return Runtime(
        project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path), retry=PATIENT
    )


def expected_record(row: tuple[Any, ...]) -> dict[str, str]:
    _, email, first_name, score, ltv = row
    record = {"email": email, "firstname": first_name, "lead_score": str(score), "source": "warehouse"}
    if ltv is not None:
        record["ltv"] = f"{ltv:g}" if float(ltv).is_integer() else str(ltv)
    return record


def held(sandbox: HubSpotSandbox) -> dict[str, dict[str, Any]]:
    return {o["properties"]["email"]: o["properties"] for o in sandbox.objects("contacts")}


def assert_holds_the_model(sandbox: HubSpotSandbox, rows: list[tuple[Any, ...]], rejected: set[str]) -> None:
    """Every accepted row is in the sandbox exactly as the model has it, and was created once."""
    contents = held(sandbox)
    assert len(contents) == len(rows) - len(rejected)
    for row in rows:
        if row[1] not in rejected:
            got = {k: v for k, v in contents[row[1]].items() if k in expected_record(row)}
            assert got == expected_record(row), row
    assert sandbox.stats()["created"] == len(contents)


def test_faults_lose_nothing_duplicate_nothing_and_converge(
    tmp_path: Path, sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    rows = contacts_rows(ROWS)
    rejected_emails = {row[1] for row in random.Random(5).sample(rows, ROWS * 2 // 100)}
    rt = make_runtime(tmp_path, sandbox, rows)
    sandbox.set_faults(Faults(**{**FAULTS.__dict__, "reject_values": rejected_emails}))

    # When the sync runs through the faults
    record = run_sync(rt, "contacts")

    # Then the counts add up, and exactly the rejected records are dead letters with HubSpot's reason
    changes = sum(record.planned[k] for k in ("added", "changed", "removed"))
    assert changes == ROWS == record.delivered + record.rejected + record.skipped
    letters = rt.state.dead_letters("contacts")
    assert {d.record["email"] for d in letters} == rejected_emails
    assert all(d.reason.startswith("VALIDATION_ERROR") for d in letters)
    # every accepted record equals its model row, and none was created twice
    assert_holds_the_model(sandbox, rows, rejected_emails)
    injected = sandbox.stats()["injected"]
    assert injected["429"] > 0 and injected["5xx"] > 0, "the faults were really injected"

    # When the cause is fixed, the next run delivers just those, and a further one plans nothing
    sandbox.set_faults(Faults(**{**FAULTS.__dict__, "reject_values": set()}))
    second = run_sync(rt, "contacts")
    assert second.planned["added"] == len(rejected_emails) and second.delivered == len(rejected_emails)
    assert run_sync(rt, "contacts").planned["unchanged"] == ROWS
    assert rt.state.dead_letters("contacts") == []
    assert sandbox.stats()["created"] == ROWS


@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_a_run_killed_before_commit_converges_without_duplicates(
    tmp_path: Path, sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    rows = contacts_rows(3_000)
    rt = make_runtime(tmp_path, sandbox, rows, mode=mode)
    # Given a run that delivered 2 of its 3 batches, then died before delivering the last and committing
    run_id = new_run_id()
    rt.state.record_run(RunRecord("contacts", run_id, "running", "2026-01-01T00:00:00+00:00", settled=False))
    plan = plan_run(rt, "contacts", run_id)
    for ref in plan.batches[:2]:
        deliver_batch(rt, "contacts", ref.key)
    assert len(sandbox.objects("contacts")) == 2_000
    # When the next run starts: Then it first commits what the dead run delivered (recorded as
    # failed, with why), plans only the rest, and nothing is created twice
    record = run_sync(rt, "contacts")
    recovered = rt.state.runs("contacts")[1]
    assert (recovered.run_id, recovered.status, recovered.delivered) == (run_id, "failed", 2_000)
    assert "RunInterrupted" in (recovered.error or "")
    assert record.planned["added"] == 1_000 and record.planned["unchanged"] == 2_000 and record.rejected == 0
    assert len(sandbox.objects("contacts")) == 3_000 and sandbox.stats()["created"] == 3_000
    assert run_sync(rt, "contacts").planned["unchanged"] == 3_000


def test_a_commit_of_a_failed_run_keeps_what_was_delivered(
    tmp_path: Path, sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    rt = make_runtime(tmp_path, sandbox, contacts_rows(2_500))
    run_id = new_run_id()
    plan = plan_run(rt, "contacts", run_id)
    deliver_batch(rt, "contacts", plan.batches[0].key)
    record = commit_run(rt, "contacts", run_id, error="DestinationAuthError: token revoked")
    assert (record.status, record.delivered, record.undelivered) == ("failed", 1_000, 1_500)
    assert run_sync(rt, "contacts").planned == {
        "added": 1_500,
        "changed": 0,
        "removed": 0,
        "unchanged": 1_000,
        "invalid": 0,
    }


class LambdaTimeout(Exception):
    """What a Lambda killed at its time limit looks like to the test: the invocation just stops."""


@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_a_deliver_cut_off_mid_batch_is_delivered_again_without_duplicates(
    tmp_path: Path, sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    from syncback.destinations.hubspot.client import HubSpotDestination

    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    rt = make_runtime(tmp_path, sandbox, contacts_rows(1_000), mode=mode)
    plan = plan_run(rt, "contacts", new_run_id())
    batch = plan.batches[0].key
    # Given a deliver invocation killed after 4 of its 10 requests, before it stored its receipt
    calls = {"n": 0}
    real_write = HubSpotDestination.write

    def dying_write(self: HubSpotDestination, changes: Any, scope: str = "") -> Any:
        calls["n"] += 1
        if calls["n"] == 5:
            raise LambdaTimeout
        return real_write(self, changes, scope)

    monkeypatch.setattr(HubSpotDestination, "write", dying_write)
    with pytest.raises(LambdaTimeout):
        deliver_batch(rt, "contacts", batch)
    assert len(sandbox.objects("contacts")) == 400
    # When Step Functions retries the batch
    outcomes = deliver_batch(rt, "contacts", batch)
    # Then every record is there exactly once, and the run commits all of them
    assert len(sandbox.objects("contacts")) == 1_000 and sandbox.stats()["created"] == 1_000
    # the journal kept the first 400 answers: only the rest was sent again
    assert {o.status for o in outcomes} == {"delivered"}
    record = commit_run(rt, "contacts", plan.run_id)
    assert record.rejected == 0 and run_sync(rt, "contacts").planned["unchanged"] == 1_000
