"""The fault suite, run against every destination's fake: under 429s, 5xx, answers that come too
late (after the write was done) and records refused one by one, nothing is lost, nothing is
created twice, the refused records are dead letters, and the sync converges once the cause is
fixed. A new destination gets it by adding its fake (see ``tests/fakes/contract.py``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from syncback.batches import LocalBatchStore
from syncback.delivery import RetryPolicy
from syncback.runner import Runtime, commit_run, deliver_batch, new_run_id, plan_run, run_sync
from syncback.spec import load_project
from syncback.state import LocalStateStore, RunRecord
from tests.conftest import contacts_rows, write_contacts, write_project
from tests.fakes.contract import Fake

PATIENT = RetryPolicy(attempts=10, base_s=0.01, cap_s=0.2)
GENERIC = {
    "email": "email",
    "customer_id": "customer_id",
    "firstname": "first_name",
    "lead_score": "lead_score",
}


def runtime(tmp_path: Path, fake: Fake, rows: list[tuple[Any, ...]], **sync: Any) -> Runtime:
    write_project(
        tmp_path,
        {
            "name": "contacts",
            "warehouse": "local",
            "table": "analytics.contacts",
            "primary_key": "customer_id",
            "destination": {**fake.destination(), "concurrency": 4},
            "batch_size": 300,
            "mapping": fake.mapping(GENERIC, key_column="customer_id"),
            **sync,
        },
        rows,
    )
    project = load_project(tmp_path)
    return Runtime(
        project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path), retry=PATIENT
    )


def assert_holds(fake: Fake, rows: list[tuple[Any, ...]], refused: set[int]) -> None:
    """Every row not refused is held exactly once with its values; nothing else is, none twice."""
    held: dict[str, dict[str, Any]] = {}
    for record in fake.records():
        key = str(record["customer_id"])
        assert key not in held, f"two records hold customer {key}"
        held[key] = record
    assert set(held) == {str(row[0]) for row in rows if row[0] not in refused}
    for customer_id, email, first_name, score, _ in rows:
        if customer_id in refused:
            continue
        got = held[str(customer_id)]
        assert (got["email"], got["firstname"], got["lead_score"]) == (
            fake.stored("email", email),
            fake.stored("firstname", first_name),
            fake.stored("lead_score", score),
        ), customer_id
    assert fake.created() == len(held), "a record was created twice"


def test_faults_lose_nothing_duplicate_nothing_and_converge(tmp_path: Path, fake: Fake) -> None:
    rows = contacts_rows(fake.fault_rows)
    refused = random.Random(5).sample(rows, fake.fault_rows * 2 // 100)
    refused_keys = {row[0] for row in refused}
    rt = runtime(tmp_path, fake, rows)
    # seed 28: two of the first four requests meet a fault, however few requests a destination needs
    fake.inject(rate_429=0.10, rate_5xx=0.05, rate_timeout=0.005, seed=28)
    fake.reject({row[1] for row in refused})

    # When the sync runs through the faults
    record = run_sync(rt, "contacts")

    # Then the counts add up, exactly the refused records are dead letters, the rest arrived once
    assert record.status == "partial", record.error
    assert record.planned["added"] == len(rows) == record.delivered + record.rejected + record.skipped
    assert {int(d.key) for d in rt.state.dead_letters("contacts")} == refused_keys
    assert_holds(fake, rows, refused_keys)
    assert fake.injected() > 0, "the faults were really injected"

    # When the cause is fixed, the next run delivers just those, and a further one plans nothing
    fake.inject(0, 0, 0, seed=0)
    fake.reject(set())
    second = run_sync(rt, "contacts")
    assert second.planned["added"] == len(refused) and second.delivered == len(refused)
    assert rt.state.dead_letters("contacts") == []
    assert run_sync(rt, "contacts").planned["unchanged"] == len(rows)
    assert_holds(fake, rows, set())


def test_a_run_killed_before_commit_converges_without_duplicates(tmp_path: Path, fake: Fake) -> None:
    rows = contacts_rows(900)
    rt = runtime(tmp_path, fake, rows)
    # Given a run that delivered 2 of its 3 batches and died before the last one and its commit
    run_id = new_run_id()
    rt.state.record_run(RunRecord("contacts", run_id, "running", "2026-01-01T00:00:00+00:00", settled=False))
    plan = plan_run(rt, "contacts", run_id)
    for ref in plan.batches[:2]:
        deliver_batch(rt, "contacts", ref.key)
    # When the next run starts, Then it commits what the dead run delivered and plans only the rest
    record = run_sync(rt, "contacts")
    assert record.planned["added"] == 300 and record.planned["unchanged"] == 600, record.planned
    assert_holds(fake, rows, set())
    assert run_sync(rt, "contacts").planned["unchanged"] == 900


def test_a_failed_run_keeps_what_was_delivered(tmp_path: Path, fake: Fake) -> None:
    rt = runtime(tmp_path, fake, contacts_rows(750))
    run_id = new_run_id()
    plan = plan_run(rt, "contacts", run_id)
    deliver_batch(rt, "contacts", plan.batches[0].key)
    record = commit_run(rt, "contacts", run_id, error="DestinationAuthError: token revoked")
    assert (record.status, record.delivered, record.undelivered) == ("failed", 300, 450)
    assert run_sync(rt, "contacts").planned["unchanged"] == 300


def test_a_record_deleted_in_the_destination_is_written_again_when_its_row_changes(
    tmp_path: Path, fake: Fake
) -> None:
    if not fake.deletes_by_hand:
        pytest.skip(f"{fake.name} keeps no record a person could delete")
    rows = contacts_rows(30)
    rt = runtime(tmp_path, fake, rows)
    assert run_sync(rt, "contacts").delivered == 30
    # Given two records someone deleted in the destination
    for record in fake.records():
        if str(record["customer_id"]) in ("3", "4"):
            fake.delete_by_hand(record["id"])
    # When their rows change: Then each is written again, by its identifier, not refused for a
    # record that is gone (the snapshot's id), and the next run has nothing to do
    rows[2] = (3, "user3@example.com", "Three", 33, None)
    rows[3] = (4, "user4@example.com", "Four", 44, None)
    write_contacts(tmp_path / "wh.duckdb", rows)
    record = run_sync(rt, "contacts")
    assert (record.status, record.delivered, record.rejected) == ("succeeded", 2, 0), record.error
    held = {str(r["customer_id"]): r for r in fake.records()}
    assert len(held) == 30 and held["3"]["firstname"] == fake.stored("firstname", "Three")
    assert run_sync(rt, "contacts").planned["unchanged"] == 30
