"""Braze user attributes end to end over loopback: the CLI and the state machine against the Braze
fake, 75 attributes objects a request, non-fatal errors in a 2xx, the X-RateLimit headers, clearing
or deleting users on removal, how each fatal answer is classified, and what validate says."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncback.cli import main
from syncback.destinations.base import Change
from syncback.destinations.braze import BrazeDestinationConfig
from syncback.destinations.braze.client import BrazeDestination
from syncback.errors import (
    ConfigError,
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SystemicError,
)
from syncback.spec import load_project
from tests.conftest import contacts_rows, contacts_sync, run_json, write_contacts, write_project
from tests.fakes.braze import KEY, BrazeFake
from tests.integration.sfn_harness import build_stack, mocked_aws, snapshot

MAPPING = {
    "external_id": "customer_id",
    "first_name": "first_name",
    "email": "email",
    "lead_score": "lead_score",
}


@pytest.fixture
def braze(monkeypatch: pytest.MonkeyPatch) -> Iterator[BrazeFake]:
    monkeypatch.setenv("BRAZE_KEY", KEY)
    with BrazeFake() as fake:
        yield fake


def destination(fake: BrazeFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "braze",
        "rest_endpoint": "rest.iad-01.braze.com",
        "base_url": fake.url,
        "api_key": "env:BRAZE_KEY",
        "timeout_s": 2,
        **extra,
    }


def project(root: Path, fake: BrazeFake, rows: int = 200, **sync: Any) -> Path:
    return write_project(root, contacts_sync(destination(fake), MAPPING, **sync), contacts_rows(rows))


def client(fake: BrazeFake, clock: Any = time.time, **extra: Any) -> BrazeDestination:
    config = BrazeDestinationConfig.model_validate(destination(fake, **extra))
    return BrazeDestination(config, KEY, clock=clock)


def upserts(*keys: int, **fields: Any) -> list[Change]:
    return [Change(str(k), "upsert", "h", {"external_id": k, "first_name": f"F{k}", **fields}) for k in keys]


def tracked(fake: BrazeFake) -> list[list[dict[str, Any]]]:
    return [body["attributes"] for path, body in fake.received if path == "/users/track"]


# ---- end to end ------------------------------------------------------------------------------------


def test_the_cli_sets_attributes_75_a_request_and_clears_users_whose_rows_left(
    tmp_path: Path, braze: BrazeFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, braze)
    # When the sync runs: Then 200 users are created in requests of 75, 75 and 50, by external_id
    code, summary = run_json(root, capsys)
    assert code == 0 and (summary["delivered"], summary["rejected"]) == (200, 0), summary
    assert sorted(len(a) for a in tracked(braze)) == [50, 75, 75] and braze.counts["created"] == 200
    assert braze.users["7"] == {"first_name": "First7", "email": "user7@example.com", "lead_score": 7}
    # When ten rows leave and one changes: Then those users stay with the mapped attributes removed
    # (null), sent update-only; the changed one is updated; nobody is created again
    rows = contacts_rows(190)
    rows[0] = (1, "new-1@example.com", "Renamed", 99, None)
    write_contacts(root / "wh.duckdb", rows)
    braze.received.clear()
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["removed"] == 10 and summary["planned"]["changed"] == 1
    assert len(braze.users) == 200 and braze.counts["created"] == 200 and braze.counts["delete"] == 0
    assert braze.users["195"] == {} and braze.users["1"]["first_name"] == "Renamed"
    cleared = next(o for batch in tracked(braze) for o in batch if o["external_id"] == "195")
    assert cleared == {
        "external_id": "195",
        "_update_existing_only": True,
        "first_name": None,
        "email": None,
        "lead_score": None,
    }
    # and a further run has nothing to do
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["unchanged"] == 190


def test_removal_delete_deletes_users_50_external_ids_a_request(
    tmp_path: Path, braze: BrazeFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, braze, destination=destination(braze, removal="delete"))
    assert run_json(root, capsys)[0] == 0
    # When 60 rows leave the model (one batch of 75 removals)
    write_contacts(root / "wh.duckdb", contacts_rows(140))
    code, summary = run_json(root, capsys)
    # Then their users are deleted, in two /users/delete requests of at most 50
    assert code == 0 and summary["planned"]["removed"] == 60 and summary["delivered"] == 60, summary
    assert len(braze.users) == 140 and braze.counts["deleted"] == 60 and braze.counts["delete"] == 2
    assert run_json(root, capsys)[1]["planned"]["unchanged"] == 140


def test_non_fatal_errors_in_a_2xx_reject_only_the_objects_they_index(
    tmp_path: Path, braze: BrazeFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, braze, rows=120)
    braze.reject({"user13@example.com", "user101@example.com"})
    code, summary = run_json(root, capsys)
    assert code == 1 and (summary["delivered"], summary["rejected"]) == (118, 2), summary
    assert set(braze.users) == {str(i) for i in range(1, 121)} - {"13", "101"}
    assert main(["--project", str(root), "dlq", "list", "contacts"]) == 0
    listing = capsys.readouterr().out
    assert "2 dead letter(s)" in listing and "Invalid value for a custom attribute" in listing
    assert "user13@example.com" not in listing  # reasons are kept, values are not
    # When Braze accepts them again: Then the next run sends just those two
    braze.reject(set())
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["delivered"] == 2 and summary["planned"]["unchanged"] == 118


def test_a_braze_sync_runs_through_the_state_machine(
    tmp_path: Path, braze: BrazeFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in mocked_aws(monkeypatch):
        root = project(tmp_path, braze, rows=300, batch_size=100)
        stack = build_stack(load_project(root), None, monkeypatch)  # the real Braze client
        execution = stack.run()
        assert execution["status"] == "SUCCEEDED", execution
        run = json.loads(execution["output"])["run"]
        assert (run["status"], run["delivered"]) == ("succeeded", 300)
        # batches of 100 go out as 75 + 25 each
        assert sorted(len(a) for a in tracked(braze)) == [25, 25, 25, 75, 75, 75]
        assert len(braze.users) == 300 and len(snapshot(stack.rt.project)) == 300


# ---- the rate limit --------------------------------------------------------------------------------


def test_a_workspace_limit_below_the_budget_is_honoured_through_its_reset_header(
    tmp_path: Path, braze: BrazeFake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a workspace that takes 3 requests a second, and a spec that believes it takes 3,000 per 3 s
    with BrazeFake(requests_per_window=3, window_s=1.0) as fake:
        root = project(tmp_path, fake, rows=900, destination=destination(fake, concurrency=2))
        started = time.monotonic()
        code, summary = run_json(root, capsys)
        took = time.monotonic() - started
    # Then every user arrived: the 429s and the "none remaining" answers held the client until each
    # reset, so 12 requests spanned four windows (the first one partly), and few were refused
    assert code == 0 and summary["delivered"] == 900, summary
    assert fake.counts["track"] == 12 and took >= 2.0
    assert fake.counts["429"] <= 4, fake.counts


def test_remaining_zero_holds_the_next_request_until_the_reset_without_sending_it(braze: BrazeFake) -> None:
    now = time.time()
    braze.fail_next(
        201,
        {"message": "success", "attributes_processed": 1},
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(now) + 30)},
    )
    destination = client(braze, clock=lambda: now)
    assert [o.status for o in destination.write(upserts(1))] == ["delivered"]
    sent = braze.counts["requests"]
    # When the next request is due before the reset: Then it is not sent, and waits for the reset
    with pytest.raises(RateLimited) as caught:
        destination.write(upserts(2))
    assert braze.counts["requests"] == sent
    assert caught.value.retry_after == pytest.approx(int(now) + 30 - now)


def test_a_429_waits_for_its_reset_header(braze: BrazeFake) -> None:
    now = time.time()
    braze.fail_next(429, {"message": "Too Many Requests"}, headers={"x-ratelimit-reset": str(int(now) + 7)})
    with pytest.raises(RateLimited) as caught:
        client(braze, clock=lambda: now).write(upserts(1))
    assert caught.value.retry_after == pytest.approx(int(now) + 7 - now)


def test_a_429_without_a_reset_header_backs_off_exponentially(braze: BrazeFake) -> None:
    braze.fail_next(429, {"message": "Too Many Requests"}, headers={"x-ratelimit-reset": "soon"})
    with pytest.raises(RateLimited) as caught:
        client(braze).write(upserts(1))
    assert caught.value.retry_after is None


# ---- fatal answers, classified -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_destination_unavailable(braze: BrazeFake, status: int) -> None:
    braze.fail_next(status, {"message": "Internal Server Error"})
    with pytest.raises(DestinationUnavailable):
        client(braze).write(upserts(1))
    assert braze.users == {}


def test_an_answer_later_than_the_timeout_is_unavailable(braze: BrazeFake) -> None:
    braze.inject(0, 0, 1.0, seed=1)
    braze.late_s = 1.0
    with pytest.raises(DestinationUnavailable, match="no answer"):
        client(braze, timeout_s=0.2).write(upserts(1))


def test_a_bad_key_stops_the_run_naming_the_key(
    tmp_path: Path, braze: BrazeFake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRAZE_KEY", "revoked-key")
    root = project(tmp_path, braze, rows=10)
    code, summary = run_json(root, capsys)
    assert code == 3 and summary["status"] == "failed" and "destination.api_key" in summary["error"], summary
    assert "revoked-key" not in json.dumps(summary) and braze.users == {}


def test_a_key_without_users_delete_is_an_auth_error_naming_the_permission(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with BrazeFake(permissions=("users.track",)) as fake:
        changes = [Change("1", "archive", destination_id="1")]
        with pytest.raises(DestinationAuthError, match="users.delete"):
            client(fake, removal="delete").write(changes)


def test_a_wrong_address_is_systemic_naming_the_rest_endpoint(braze: BrazeFake) -> None:
    destination = client(braze, base_url=braze.url + "/nope")
    with pytest.raises(SystemicError) as caught:
        destination.write(upserts(1))
    assert caught.value.field == "destination.rest_endpoint"


def test_more_objects_than_the_contract_takes_is_a_400_the_delivery_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRAZE_KEY", KEY)
    # Given a workspace on a contract of 50 objects a request, and a spec left at 75
    with BrazeFake(max_objects=50) as fake:
        with pytest.raises(RequestRejected, match="batch_size: 50"):
            client(fake).write(upserts(*range(1, 76)))
        root = project(tmp_path, fake, rows=150)
        code, summary = run_json(root, capsys)
    # Then the refused requests are split, and every user arrives
    assert code == 0 and summary["delivered"] == 150 and len(fake.users) == 150, summary


def test_a_non_fatal_error_that_names_no_object_refuses_the_request_until_it_names_one(
    braze: BrazeFake,
) -> None:
    unnamed = {"message": "success", "errors": [{"type": "something went wrong"}]}
    braze.fail_next(201, unnamed)
    with pytest.raises(RequestRejected, match="names no user"):
        client(braze).write(upserts(1, 2))
    braze.fail_next(201, unnamed)
    (alone,) = client(braze).write(upserts(3))
    assert (alone.status, alone.reason) == ("rejected", "Braze: something went wrong")


def test_error_messages_carry_no_record_value_and_no_key(braze: BrazeFake) -> None:
    braze.fail_next(400, {"message": f"Bad Request: secret-value-42 and {KEY}", "errors": []})
    with pytest.raises(RequestRejected) as caught:
        client(braze).write(upserts(1, first_name="secret-value-42"))
    assert "secret-value-42" not in str(caught.value) and KEY not in str(caught.value)


# ---- what the client sends ------------------------------------------------------------------------


def test_records_without_an_external_id_or_valid_json_are_settled_without_being_sent(
    braze: BrazeFake,
) -> None:
    changes = [
        Change("1", "upsert", "h", {"external_id": None, "first_name": "A"}),
        Change("2", "upsert", "h", {"external_id": 2, "score": float("nan")}),
        Change("3", "upsert", "h", {"external_id": 3, "first_name": "C"}),
    ]
    outcomes = client(braze).write(changes)
    assert [o.status for o in outcomes] == ["rejected", "rejected", "delivered"]
    assert "external_id" in str(outcomes[0].reason) and "score" in str(outcomes[1].reason)
    # one request, carrying the one object that can be sent, its external_id as a string
    assert tracked(braze) == [[{"external_id": "3", "first_name": "C"}]]
    assert (outcomes[2].destination_id, outcomes[2].created) == ("3", None)


def test_a_clear_without_a_recorded_user_and_a_release_are_skipped(braze: BrazeFake) -> None:
    changes = [Change("1", "clear", None, {"first_name": None})]
    assert client(braze).write(changes)[0].status == "skipped"
    assert client(braze).write([Change("2", "release", None, {}, "2")])[0].status == "skipped"
    assert braze.counts["requests"] == 0


def test_a_clear_of_a_user_deleted_in_braze_creates_nobody(braze: BrazeFake) -> None:
    (outcome,) = client(braze).write([Change("9", "clear", None, {"first_name": None}, "9")])
    assert outcome.status == "delivered" and braze.users == {} and braze.counts["created"] == 0


def test_an_archive_without_a_recorded_user_is_skipped(braze: BrazeFake) -> None:
    changes = [Change("1", "archive"), Change("2", "archive", destination_id="2")]
    braze.users["2"] = {"first_name": "B"}
    outcomes = client(braze, removal="delete").write(changes)
    assert [o.status for o in outcomes] == ["skipped", "delivered"] and braze.users == {}


# ---- validate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {"mapping": {k: v for k, v in MAPPING.items() if k != "external_id"}},
            "mapping: the mapping has no field 'external_id' (Braze finds users by it); map the primary "
            "key to it: external_id: customer_id",
        ),
        (
            {"mapping": {**MAPPING, "external_id": "email"}},
            "mapping.external_id: map it from the primary key (customer_id)",
        ),
        (
            {"mapping": {**MAPPING, "user_alias": "email"}},
            "mapping.user_alias: 'user_alias' is not an attribute",
        ),
        (
            {"mapping": {**MAPPING, "_update_existing_only": {"value": True}}},
            "mapping._update_existing_only: '_update_existing_only' is not an attribute",
        ),
        ({"mode": "insert"}, "a braze destination takes upsert or mirror, not insert"),
        (
            {"destination_extra": {"rest_endpoint": "dashboard-01.braze.com"}},
            "destination.rest_endpoint: 'dashboard-01.braze.com' is not the REST endpoint",
        ),
        (
            {"destination_extra": {"rest_endpoint": "https://rest.iad-01.braze.com/users/track"}},
            "write the host only, e.g. rest.iad-01.braze.com",
        ),
        (
            {"destination_extra": {"rest_endpoint": "api.example.com"}},
            "'api.example.com' is not a Braze REST endpoint such as rest.iad-01.braze.com",
        ),
        (
            {"destination_extra": {"batch_size": 100}},
            "destination.batch_size: Input should be less than or equal to 75",
        ),
        (
            {"destination_extra": {"removal": "archive"}},
            "destination.removal: Input should be 'clear' or 'delete'",
        ),
        (
            {"destination_extra": {"api_key": "0123-abcd"}},
            "destination.api_key: secrets are never written",
        ),
    ],
)
def test_validate_names_the_file_the_field_and_the_fix(
    tmp_path: Path, braze: BrazeFake, change: dict[str, Any], says: str
) -> None:
    extra = change.pop("destination_extra", {})
    project(tmp_path, braze, rows=1, destination=destination(braze, **extra), **change)
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert says in str(caught.value) and "syncs/contacts.yaml" in str(caught.value), str(caught.value)


def test_an_https_rest_endpoint_is_taken_as_its_host(tmp_path: Path, braze: BrazeFake) -> None:
    spec = destination(braze, rest_endpoint="https://rest.fra-01.braze.eu/")
    project(tmp_path, braze, rows=1, destination={k: v for k, v in spec.items() if k != "base_url"})
    config = load_project(tmp_path).sync("contacts").destination
    assert isinstance(config, BrazeDestinationConfig) and config.url == "https://rest.fra-01.braze.eu"


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("Bearer abc-123", "starts with 'Bearer '"),
        ("abc 123", "holds white space"),
    ],
)
def test_validate_checks_the_key_it_reads_naming_the_field(
    tmp_path: Path,
    braze: BrazeFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str,
    says: str,
) -> None:
    monkeypatch.setenv("BRAZE_KEY", key)
    root = project(tmp_path, braze, rows=1)
    assert main(["--project", str(root), "validate"]) == 2
    out = capsys.readouterr()
    assert f"syncs/contacts.yaml: destination.api_key: the Braze REST API key {says}" in out.out + out.err
    assert "abc" not in out.out + out.err


def test_an_empty_key_from_secrets_manager_is_refused_saying_where_to_make_one() -> None:
    from syncback.destinations.braze import check_key
    from syncback.errors import SecretError

    with pytest.raises(SecretError, match="is empty; create one under Settings > APIs and Identifiers"):
        check_key("api_key", "  ")
    check_key("api_key", "a1b2c3d4-0000-4000-8000-000000000000")
