"""A whole local run on DuckDB: plan in SQL, deliver, commit; and the invariants that hold across runs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from syncback.batches import LocalBatchStore
from syncback.commit import replay
from syncback.delivery import RetryPolicy
from syncback.errors import DestinationAuthError, GuardError, ModelError
from syncback.planner import Planner
from syncback.runner import Runtime, deliver_batch, plan_run, run_sync
from syncback.spec import Project
from syncback.state import LocalStateStore
from syncback.warehouses.dialect import Dialect, DuckDBDialect
from syncback.warehouses.duckdb import DuckDBWarehouse
from tests.conftest import ProjectFactory, contacts_rows, write_contacts
from tests.fakes.recording import RecordingDestination, RecordingJobs


def runtime(project: Project, destination: RecordingDestination) -> Runtime:
    root = project.state_path
    return Runtime(
        project,
        LocalBatchStore(root),
        LocalStateStore(root),
        retry=RetryPolicy(attempts=2, base_s=0, cap_s=0),
        destination_factory=lambda sync: destination,
    )


def snapshot(project: Project) -> dict[str, str]:
    con = duckdb.connect(str(project.root / "wh.duckdb"))
    rows = con.execute("select key, row_hash from syncback.snapshot__contacts where not removed").fetchall()
    con.close()
    return dict(rows)


def test_first_run_adds_everything_and_a_second_plans_nothing(make_project: ProjectFactory) -> None:
    # Given 120 rows and an empty destination
    project = make_project(rows=contacts_rows(120))
    destination = RecordingDestination()
    # When the sync runs twice
    first = run_sync(runtime(project, destination), "contacts")
    second = run_sync(runtime(project, destination), "contacts")
    # Then the first sends all 120 in 3 batches and the second sends nothing
    assert first.status == "succeeded" and first.planned["added"] == 120 and first.delivered == 120
    assert second.planned == {"added": 0, "changed": 0, "removed": 0, "unchanged": 120, "invalid": 0}
    assert len(destination.records) == 120 and sum(map(len, destination.requests)) == 120
    # and only mapped fields left the warehouse; null ltv was skipped, not sent
    assert destination.records["7"] == {
        "email": "user7@example.com",
        "firstname": "First7",
        "lead_score": 7,
        "source": "warehouse",
    }


def test_only_changed_rows_are_sent_and_removed_ones_forgotten_in_upsert_mode(
    make_project: ProjectFactory,
) -> None:
    project = make_project(rows=contacts_rows(100))
    destination = RecordingDestination()
    run_sync(runtime(project, destination), "contacts")
    # Given 3 rows changed, 2 removed and 4 added
    rows = [r for r in contacts_rows(100) if r[0] not in (10, 20)]
    rows = [(i, e, f + "!" if i in (1, 2, 3) else f, s, v) for i, e, f, s, v in rows] + contacts_rows(
        4, start=500
    )
    write_contacts(project.root / "wh.duckdb", rows)
    destination.requests.clear()
    # When it runs again
    record = run_sync(runtime(project, destination), "contacts")
    # Then exactly those were planned, the 7 writes sent, and the removed keys forgotten
    assert record.planned == {"added": 4, "changed": 3, "removed": 2, "unchanged": 95, "invalid": 0}
    assert sorted(k for r in destination.requests for k in r) == sorted(
        ["1", "2", "3", "500", "501", "502", "503"]
    )
    assert record.delivered == 7 and record.skipped == 2
    assert "10" not in snapshot(project) and len(snapshot(project)) == 102


def test_null_and_duplicate_keys_and_bad_values_are_invalid_never_sent(make_project: ProjectFactory) -> None:
    rows = contacts_rows(10) + [(None, "nokey@x.io", "N", 1, 1.0), (3, "dup@x.io", "D", 1, 1.0)]
    project = make_project(
        rows=rows, mapping={"email": "email", "score": {"column": "first_name", "transform": "integer"}}
    )
    destination = RecordingDestination()
    record = run_sync(runtime(project, destination), "contacts")
    # every row is invalid: null key 1, duplicate key 3 (2 rows), and 9 names that are not integers
    assert record.planned["invalid"] == 12 and record.delivered == 0
    reasons = [item["reason"] for item in record.invalid_sample]
    assert any("is null (1 rows)" in r for r in reasons) and any(
        "duplicate primary key (2 rows" in r for r in reasons
    )
    assert any(
        r.startswith("field score (column first_name): value is text that is not an integer") for r in reasons
    )
    assert destination.requests == []


def test_rejected_records_are_dead_letters_and_planned_again_until_fixed(
    make_project: ProjectFactory,
) -> None:
    # Given a destination rejecting two records
    project = make_project(rows=contacts_rows(60))
    destination = RecordingDestination()
    destination.reject_keys = {"5", "42"}
    rt = runtime(project, destination)
    # When it runs: Then the run is partial, the two are dead letters with the reason, not in the snapshot
    first = run_sync(rt, "contacts")
    assert (first.status, first.delivered, first.rejected) == ("partial", 58, 2)
    letters = {d.key: d for d in rt.state.dead_letters("contacts")}
    assert set(letters) == {"5", "42"} and letters["5"].reason == "VALIDATION_ERROR: not valid"
    assert letters["5"].record["email"] == "user5@example.com"
    assert "5" not in snapshot(project)
    # When the cause is fixed, the next run delivers just them and clears the dead letters
    destination.reject_keys = set()
    second = run_sync(rt, "contacts")
    assert (second.status, second.planned["added"], second.delivered) == ("succeeded", 2, 2)
    assert rt.state.dead_letters("contacts") == []
    # and a further run plans zero changes
    assert run_sync(rt, "contacts").planned["unchanged"] == 60


def test_replay_delivers_dead_letters_but_never_overwrites_a_newer_delivery(
    make_project: ProjectFactory,
) -> None:
    project = make_project(rows=contacts_rows(20))
    destination = RecordingDestination()
    destination.reject_keys = {"4", "8"}
    rt = runtime(project, destination)
    run_sync(rt, "contacts")
    stale_letters = rt.state.dead_letters("contacts")
    # Given a later run delivered key 4 with a newer value (8 still rejected)
    rows = [(i, e, "Newer" if i == 4 else f, s, v) for i, e, f, s, v in contacts_rows(20)]
    write_contacts(project.root / "wh.duckdb", rows)
    destination.reject_keys = {"8"}
    run_sync(rt, "contacts")
    assert destination.records["4"]["firstname"] == "Newer"
    # When the old dead letters are replayed with the cause fixed
    destination.reject_keys = set()
    result = replay(rt, "contacts", stale_letters)
    # Then 4's stale version is skipped, 8 is delivered, and the snapshot now holds 8
    assert (result.delivered, result.stale, result.rejected) == (1, 1, 0)
    assert destination.records["4"]["firstname"] == "Newer"
    assert "8" in snapshot(project)
    assert run_sync(rt, "contacts").planned["unchanged"] == 20


def test_mirror_archives_what_left_the_model_within_the_guard(make_project: ProjectFactory) -> None:
    project = make_project(rows=contacts_rows(50), mode="mirror", guards={"max_delete_pct": 10})
    destination = RecordingDestination()
    rt = runtime(project, destination)
    run_sync(rt, "contacts")
    write_contacts(project.root / "wh.duckdb", contacts_rows(47))
    record = run_sync(rt, "contacts")
    assert record.planned["removed"] == 3 and record.delivered == 3
    assert set(destination.records) == {str(i) for i in range(1, 48)}


def test_mirror_guard_stops_a_plan_deleting_too_much(make_project: ProjectFactory) -> None:
    project = make_project(rows=contacts_rows(50), mode="mirror", guards={"max_delete_pct": 10})
    destination = RecordingDestination()
    rt = runtime(project, destination)
    run_sync(rt, "contacts")
    write_contacts(project.root / "wh.duckdb", contacts_rows(40))
    with pytest.raises(GuardError, match="deletes 10 of 50 records \\(20.0%\\)"):
        run_sync(rt, "contacts")
    assert len(destination.records) == 50 and rt.state.runs("contacts")[0].status == "failed"


def test_an_empty_model_never_deletes_everything(make_project: ProjectFactory) -> None:
    project = make_project(rows=contacts_rows(5), mode="mirror", guards={"max_delete_pct": 100})
    destination = RecordingDestination()
    rt = runtime(project, destination)
    run_sync(rt, "contacts")
    write_contacts(project.root / "wh.duckdb", [])
    with pytest.raises(GuardError, match="the model returned no rows"):
        run_sync(rt, "contacts")
    assert len(destination.records) == 5


def test_full_resync_sends_everything_again_without_deleting(make_project: ProjectFactory) -> None:
    project = make_project(rows=contacts_rows(30), mode="mirror", guards={"max_delete_pct": 50})
    destination = RecordingDestination()
    rt = runtime(project, destination)
    run_sync(rt, "contacts")
    write_contacts(project.root / "wh.duckdb", contacts_rows(28))
    record = run_sync(rt, "contacts", full_resync=True)
    assert record.planned == {"added": 0, "changed": 28, "removed": 0, "unchanged": 0, "invalid": 0}
    assert len(destination.records) == 30


def test_insert_mode_sends_new_records_only(make_project: ProjectFactory) -> None:
    project = make_project(rows=contacts_rows(10), mode="insert")
    destination = RecordingDestination()
    rt = runtime(project, destination)
    run_sync(rt, "contacts")
    write_contacts(project.root / "wh.duckdb", [(i, e, "X", s, v) for i, e, f, s, v in contacts_rows(10)])
    destination.requests.clear()
    record = run_sync(rt, "contacts")
    assert record.planned["changed"] == 10 and record.skipped == 10 and destination.requests == []
    assert run_sync(rt, "contacts").planned["unchanged"] == 10


def test_an_auth_failure_fails_the_run_without_advancing_the_snapshot(make_project: ProjectFactory) -> None:
    project = make_project(rows=contacts_rows(10))
    destination = RecordingDestination()
    destination.failures = [DestinationAuthError("HubSpot answered 401")]
    record = run_sync(runtime(project, destination), "contacts")
    assert record.status == "failed" and "DestinationAuthError" in (record.error or "")
    assert record.undelivered == 10 and len(destination.requests) == 1
    assert snapshot(project) == {}


def test_a_model_missing_a_mapped_column_is_a_clear_error(make_project: ProjectFactory) -> None:
    project = make_project(rows=contacts_rows(3), mapping={"email": "email", "x": "no_such_column"})
    with pytest.raises(
        ModelError,
        match="syncs/contacts.yaml: mapping.x: the model has no column no_such_column; fix the name",
    ):
        run_sync(runtime(project, RecordingDestination()), "contacts")


def test_a_model_whose_sql_fails_is_a_model_error(make_project: ProjectFactory) -> None:
    project = make_project(rows=contacts_rows(3), table=None, model="select * from analytics.nope")
    with pytest.raises(ModelError, match="nope"):
        run_sync(runtime(project, RecordingDestination()), "contacts")


def test_change_detection_follows_the_values_sent_not_the_column_types(make_project: ProjectFactory) -> None:
    # Given lead_score synced through the integer transform, and ltv sent as the column holds it
    project = make_project(rows=contacts_rows(10))
    destination = RecordingDestination()
    rt = runtime(project, destination)
    run_sync(rt, "contacts")
    # When lead_score becomes a double holding the same whole numbers: Then nothing changed
    con = duckdb.connect(str(project.root / "wh.duckdb"))
    con.execute("alter table analytics.contacts alter lead_score type double")
    con.close()
    assert run_sync(rt, "contacts").planned["changed"] == 0
    # When ltv becomes text: its JSON form may change ("1.5" instead of 1.5), so every row is sent,
    # the one without an ltv too (a field of another kind counts as a change of every record)
    con = duckdb.connect(str(project.root / "wh.duckdb"))
    con.execute("alter table analytics.contacts alter lifetime_value type varchar")
    con.close()
    record = run_sync(rt, "contacts")
    assert record.planned["changed"] == 10 and destination.records["3"]["ltv"] == "4.5"


def test_a_snapshot_an_older_release_hashed_is_not_sent_again_and_gets_the_new_hashes(
    make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sync run by a release that kept an md5 of each record's text
    project = make_project(rows=contacts_rows(10))
    destination = RecordingDestination()
    rt = runtime(project, destination)
    with monkeypatch.context() as older:
        for name in ("compact_row_hash", "kept_hash", "compact_hash"):
            older.setattr(DuckDBDialect, name, getattr(Dialect, name))
        run_sync(rt, "contacts")
    assert all(len(h) == 32 for h in snapshot(project).values())
    # and one row changed since
    rows = contacts_rows(10)
    rows[3] = (*rows[3][:2], "Changed", *rows[3][3:])
    write_contacts(project.root / "wh.duckdb", rows)
    # When this release runs: Then only the changed row is sent, and every row holds its new hash
    assert run_sync(rt, "contacts").planned == {
        "added": 0,
        "changed": 1,
        "removed": 0,
        "unchanged": 9,
        "invalid": 0,
    }
    assert all(len(h) < 32 for h in snapshot(project).values())
    # and the next run finds nothing to send
    assert run_sync(rt, "contacts").planned["changed"] == 0


def test_a_local_run_keeps_one_pool_of_jobs_across_batches(make_project: ProjectFactory) -> None:
    # Given 120 rows in batches of 50, to a destination that works in jobs of at most 20 records,
    # takes 6 jobs at once and finishes each on its 2nd poll
    project = make_project(rows=contacts_rows(120))
    destination = RecordingJobs(max_batch_size=20, max_jobs=6, polls=2)
    # When a local run delivers them
    record = run_sync(runtime(project, destination), "contacts")
    # Then the second batch's jobs are submitted while the first batch's run (6 under way, where
    # one batch has 3), every pass polls the jobs of all open batches in one request (the third
    # batch's one job is submitted in the pass that finds the first six done), and none is
    # submitted twice
    assert record.delivered == 120 and len(destination.records) == 120
    assert destination.most_running == 6 and len(destination.jobs) == 7
    assert destination.polls_sent == 4


def test_two_runs_of_one_sync_never_overlap(make_project: ProjectFactory) -> None:
    # Given a run of the sync in progress (its lock held)
    project = make_project(rows=contacts_rows(3))
    destination = RecordingDestination()
    rt = runtime(project, destination)
    with rt.state.lock("contacts"):
        # When a second run starts: Then it is not started, and is recorded as skipped
        record = run_sync(rt, "contacts")
    assert record.status == "skipped" and "another run is in progress" in (record.error or "")
    assert destination.requests == [] and rt.state.runs("contacts")[0].run_id == record.run_id
    # and once the first is over, a run goes ahead
    assert run_sync(rt, "contacts").delivered == 3


def test_plan_is_a_dry_run(make_project: ProjectFactory, tmp_path: Path) -> None:
    project = make_project(rows=contacts_rows(10))
    warehouse = DuckDBWarehouse(project.root / "wh.duckdb")
    plan = Planner(project.sync("contacts"), warehouse, "syncback").plan("r1", None, sample_changes=2)
    warehouse.close()
    assert plan.counts.added == 10 and len(plan.change_sample) == 2
    assert snapshot(project) == {} and not (project.state_path / "runs").exists()


def test_delivering_a_batch_twice_sends_it_once(make_project: ProjectFactory) -> None:
    # Given a planned run whose first batch was delivered
    project = make_project(rows=contacts_rows(120), mode="insert")
    destination = RecordingDestination()
    rt = runtime(project, destination)
    plan = plan_run(rt, "contacts", "run-1")
    first = deliver_batch(rt, "contacts", plan.batches[0].key)
    # When the same batch is delivered again (a retry after a timeout)
    again = deliver_batch(rt, "contacts", plan.batches[0].key)
    # Then nothing is sent twice and the same outcomes come back
    assert again == first and len(destination.requests) == 1


def test_a_destination_down_past_the_retries_fails_the_run_without_dead_letters(
    make_project: ProjectFactory,
) -> None:
    from syncback.errors import DestinationUnavailable

    project = make_project(rows=contacts_rows(120))
    destination = RecordingDestination()
    destination.failures = [DestinationUnavailable("connection refused")] * 50
    rt = runtime(project, destination)
    record = run_sync(rt, "contacts")
    # the run failed; nothing was delivered, nothing is a dead letter; all is planned again
    assert record.status == "failed" and "DestinationUnavailable" in (record.error or "")
    assert record.undelivered == 120 and record.rejected == 0
    assert rt.state.dead_letters("contacts") == []
    destination.failures = []
    assert run_sync(rt, "contacts").planned["added"] == 120


def test_two_rows_with_one_destination_identifier_send_only_the_first(make_project: ProjectFactory) -> None:
    # Given two customers sharing an email (HubSpot keeps one contact per email)
    rows = [*contacts_rows(5), (6, "USER2@example.com ", "Twin", 1, 1.0)]
    project = make_project(rows=rows, mapping={"email": {"column": "email", "transform": ["trim", "lower"]}})
    destination = RecordingDestination()
    record = run_sync(runtime(project, destination), "contacts")
    # Then one of them is sent and the other is invalid, naming the first
    assert record.delivered == 5 and record.planned["invalid"] == 1
    (invalid,) = record.invalid_sample
    assert (
        invalid["key"] == "6"
        and "the same value (as the destination compares it) as the row with key 2" in invalid["reason"]
    )


@pytest.mark.parametrize("rewrite_from_rows", [1, None])
def test_a_commit_that_writes_the_snapshot_anew_leaves_what_a_delete_would(
    make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch, rewrite_from_rows: int | None
) -> None:
    # Given a commit that writes the snapshot anew from its first outcome (as DuckDB does from a
    # million, where ten million deletes did not fit in memory), or one that never does
    monkeypatch.setattr(DuckDBDialect, "rewrite_from_rows", rewrite_from_rows)
    project = make_project(rows=contacts_rows(120))
    destination = RecordingDestination()
    rt = runtime(project, destination)
    run_sync(rt, "contacts")
    # When rows change, leave, and one is rejected
    rows = contacts_rows(120)[:100]
    rows[3] = (*rows[3][:2], "Changed", *rows[3][3:])
    rows[7] = (*rows[7][:2], "Also changed", *rows[7][3:])
    write_contacts(project.root / "wh.duckdb", rows)
    destination.reject_keys = {"8"}
    record = run_sync(rt, "contacts")
    # Then both keep the same snapshot: 100 rows live (the rejected one as it was), 20 left
    con = duckdb.connect(str(project.root / "wh.duckdb"))
    kept = con.execute(
        "select removed, count(*), count(row_hash), count(destination_id) from syncback.snapshot__contacts "
        "group by removed order by removed"
    ).fetchall()
    con.close()
    assert (record.planned["changed"], record.planned["removed"], record.rejected) == (2, 20, 1)
    assert kept == [(False, 100, 100, 100), (True, 20, 0, 20)]
    # and a third run sends only the rejected row again
    destination.reject_keys = set()
    assert run_sync(rt, "contacts").planned == {
        "added": 0,
        "changed": 1,
        "removed": 0,
        "unchanged": 99,
        "invalid": 0,
    }
