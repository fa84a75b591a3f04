"""Intercom contacts end to end over loopback: the CLI and the state machine against the Intercom
fake, one request a record, a 409 resolved to the existing contact, the X-RateLimit headers,
archiving or deleting only what the sync created, each failure answer classified, and validate."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncback.cli import main
from syncback.destinations.base import Change
from syncback.destinations.intercom import IntercomDestinationConfig
from syncback.destinations.intercom.client import IntercomDestination
from syncback.errors import (
    ConfigError,
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    SystemicError,
)
from syncback.spec import load_project
from tests.conftest import contacts_rows, contacts_sync, run_json, write_contacts, write_project
from tests.fakes.intercom import TOKEN, IntercomFake
from tests.integration.sfn_harness import build_stack, mocked_aws, snapshot

MAPPING = {
    "external_id": "customer_id",
    "email": "email",
    "name": "first_name",
    "custom_attributes.lead_score": "lead_score",
}


@pytest.fixture
def intercom(monkeypatch: pytest.MonkeyPatch) -> Iterator[IntercomFake]:
    monkeypatch.setenv("INTERCOM_TOKEN", TOKEN)
    with IntercomFake() as fake:
        yield fake


def destination(fake: IntercomFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "intercom",
        "base_url": fake.url,
        "access_token": "env:INTERCOM_TOKEN",
        "timeout_s": 2,
        **extra,
    }


def project(root: Path, fake: IntercomFake, rows: int = 60, **sync: Any) -> Path:
    spec = contacts_sync(destination(fake), MAPPING, **{"batch_size": 20, **sync})
    return write_project(root, spec, contacts_rows(rows))


def client(fake: IntercomFake, clock: Any = time.time, **extra: Any) -> IntercomDestination:
    config = IntercomDestinationConfig.model_validate(destination(fake, **extra))
    return IntercomDestination(config, TOKEN, clock=clock)


def upsert(key: int, destination_id: str | None = None, **fields: Any) -> Change:
    record = {"external_id": key, "email": f"u{key}@x.io", "custom_attributes.lead_score": key, **fields}
    return Change(str(key), "upsert", "h", record, destination_id)


def by_external_id(fake: IntercomFake) -> dict[str, dict[str, Any]]:
    return {str(c.get("external_id")): c for c in fake.contacts.values() if not c["archived"]}


# ---- end to end ------------------------------------------------------------------------------------


def test_the_cli_creates_one_contact_a_request_and_archives_only_what_it_created(
    tmp_path: Path, intercom: IntercomFake, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a contact a person made with the e-mail and external_id of row 5
    intercom.contacts["byhand"] = {
        "role": "user",
        "external_id": "5",
        "email": "user5@example.com",
        "custom_attributes": {},
        "archived": False,
    }
    root = project(tmp_path, intercom)
    # When the sync runs: Then 59 contacts are created, one POST each, and row 5 updates the person's
    code, summary = run_json(root, capsys)
    assert code == 0 and (summary["delivered"], summary["rejected"]) == (60, 0), summary
    assert intercom.counts["created"] == 59 and intercom.counts["409"] == 1
    posts = [b for m, p, b in intercom.received if (m, p) == ("POST", "/contacts")]
    assert len(posts) == 60 and all(b["role"] == "user" and "external_id" in b for b in posts)
    held = by_external_id(intercom)
    assert held["7"]["name"] == "First7" and held["7"]["custom_attributes"] == {"lead_score": 7}
    assert held["5"] is intercom.contacts["byhand"] and held["5"]["name"] == "First5"
    assert set(intercom.versions) == {"2.11"}
    # When rows 51-60 (and 5) leave and row 1 changes: Then the ten it created are archived, the
    # person's contact stays, and row 1 is updated by its Intercom id
    rows = [r for r in contacts_rows(50) if r[0] != 5]
    rows[0] = (1, "new-1@example.com", "Renamed", 99, None)
    write_contacts(root / "wh.duckdb", rows)
    intercom.received.clear()
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["removed"] == 11 and summary["planned"]["changed"] == 1, summary
    assert intercom.counts["archived"] == 10 and not intercom.contacts["byhand"]["archived"]
    assert by_external_id(intercom)["1"]["email"] == "new-1@example.com"
    assert not [p for m, p, b in intercom.received if (m, p) == ("POST", "/contacts")]
    # and a further run has nothing to do
    assert run_json(root, capsys)[1]["planned"]["unchanged"] == 49


def test_removal_delete_deletes_the_contacts_it_created(
    tmp_path: Path, intercom: IntercomFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, intercom, destination=destination(intercom, removal="delete"))
    assert run_json(root, capsys)[0] == 0
    write_contacts(root / "wh.duckdb", contacts_rows(45))
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["delivered"] == 15 and intercom.counts["deleted"] == 15, summary
    assert len(intercom.contacts) == 45


def test_an_intercom_sync_runs_through_the_state_machine(
    tmp_path: Path, intercom: IntercomFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in mocked_aws(monkeypatch):
        root = project(tmp_path, intercom, rows=80, batch_size=20)
        stack = build_stack(load_project(root), None, monkeypatch)  # the real Intercom client
        execution = stack.run()
        assert execution["status"] == "SUCCEEDED", execution
        run = json.loads(execution["output"])["run"]
        assert (run["status"], run["delivered"]) == ("succeeded", 80)
        assert len(intercom.contacts) == 80 and len(snapshot(stack.rt.project)) == 80


# ---- 409 and gone ------------------------------------------------------------------------------------


def test_a_409_is_resolved_to_the_contact_its_message_names(intercom: IntercomFake) -> None:
    first = client(intercom).write([upsert(1)])[0]
    # When the same external_id is created again (an answer lost, a contact made elsewhere)
    again = client(intercom).write([upsert(1, name="Again")])[0]
    # Then the contact named by the 409 is updated, and the outcome says this write did not create it
    assert (first.status, first.created) == ("delivered", True)
    assert (again.status, again.destination_id, again.created) == ("delivered", first.destination_id, False)
    assert len(intercom.contacts) == 1 and intercom.contacts[str(first.destination_id)]["name"] == "Again"
    assert intercom.counts["search"] == 0


def test_a_409_without_an_id_is_resolved_by_searching_the_identifier(intercom: IntercomFake) -> None:
    made = client(intercom, identify_by="email").write([upsert(1)])[0]
    intercom.conflict_without_id = True
    again = client(intercom, identify_by="email").write([upsert(1, external_id=None)])[0]
    assert again.destination_id == made.destination_id and intercom.counts["search"] == 1
    search = next(b for m, p, b in intercom.received if p == "/contacts/search")
    assert search == {"query": {"field": "email", "operator": "=", "value": "u1@x.io"}}


def test_a_409_that_search_cannot_see_yet_is_retried_later(intercom: IntercomFake) -> None:
    made = client(intercom).write([upsert(1)])[0]
    intercom.conflict_without_id = True
    intercom.unsearchable.add(str(made.destination_id))
    with pytest.raises(DestinationUnavailable, match="search finds none yet"):
        client(intercom).write([upsert(1)])


def test_an_update_of_a_deleted_contact_is_gone(intercom: IntercomFake) -> None:
    outcome = client(intercom).write([upsert(1, destination_id="0123456789abcdef01234567")])[0]
    assert outcome.status == "gone" and intercom.contacts == {}


def test_clear_release_and_archive_without_an_id_are_skipped(intercom: IntercomFake) -> None:
    changes = [Change("1", "clear", None, {"name": None}), Change("2", "archive")]
    assert [o.status for o in client(intercom).write(changes)] == ["skipped", "skipped"]
    assert intercom.counts["requests"] == 0


def test_a_record_without_its_identifier_or_with_a_refused_value_is_rejected(intercom: IntercomFake) -> None:
    intercom.reject({"u2@x.io"})
    outcomes = client(intercom).write([upsert(1, external_id=None), upsert(2)])
    assert [o.status for o in outcomes] == ["rejected", "rejected"]
    assert "no external_id" in str(outcomes[0].reason) and "parameter_invalid" in str(outcomes[1].reason)
    assert "u2@x.io" not in str(outcomes[1].reason) and intercom.contacts == {}


# ---- the rate limit --------------------------------------------------------------------------------


def test_an_app_limit_below_the_budget_is_honoured_through_its_reset_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an app that takes 20 requests a second, and a spec that believes it takes 1,666 per 10 s
    monkeypatch.setenv("INTERCOM_TOKEN", TOKEN)
    with IntercomFake(requests_per_window=20, window_s=1.0) as fake:
        root = project(tmp_path, fake, rows=60, destination=destination(fake, concurrency=3))
        started = time.monotonic()
        code, summary = run_json(root, capsys)
        took = time.monotonic() - started
    # Then every contact arrived, the headers holding the client until each reset
    assert code == 0 and summary["delivered"] == 60, summary
    assert fake.counts["created"] == 60 and took >= 1.0  # three windows, the first partly
    assert fake.counts["429"] <= 6, fake.counts


def test_remaining_zero_holds_the_next_request_until_the_reset_without_sending_it(
    intercom: IntercomFake,
) -> None:
    now = time.time()
    intercom.fail_next(
        200,
        {"type": "contact", "id": "abc"},
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(now) + 9)},
    )
    destination = client(intercom, clock=lambda: now)
    assert destination.write([upsert(1)])[0].destination_id == "abc"
    sent = intercom.counts["requests"]
    with pytest.raises(RateLimited) as caught:
        destination.write([upsert(2)])
    assert intercom.counts["requests"] == sent
    assert caught.value.retry_after == pytest.approx(int(now) + 9 - now)


def test_a_429_waits_for_its_reset_header(intercom: IntercomFake) -> None:
    now = time.time()
    intercom.fail_next(429, {"type": "error.list"}, headers={"X-RateLimit-Reset": str(int(now) + 7)})
    with pytest.raises(RateLimited) as caught:
        client(intercom, clock=lambda: now).write([upsert(1)])
    assert caught.value.retry_after == pytest.approx(int(now) + 7 - now)


# ---- fatal answers, classified -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_destination_unavailable(intercom: IntercomFake, status: int) -> None:
    intercom.fail_next(status, {"type": "error.list", "errors": [{"code": "server_error", "message": "x"}]})
    with pytest.raises(DestinationUnavailable):
        client(intercom).write([upsert(1)])


def test_an_answer_later_than_the_timeout_is_unavailable(intercom: IntercomFake) -> None:
    intercom.inject(0, 0, 1.0, seed=1)
    intercom.late_s = 1.0
    with pytest.raises(DestinationUnavailable, match="no answer"):
        client(intercom, timeout_s=0.2).write([upsert(1)])


def test_a_bad_token_stops_the_run_naming_the_token(
    tmp_path: Path,
    intercom: IntercomFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("INTERCOM_TOKEN", "revoked-token")
    root = project(tmp_path, intercom, rows=5)
    code, summary = run_json(root, capsys)
    assert code == 3 and "destination.access_token" in summary["error"], summary
    assert "revoked-token" not in json.dumps(summary) and intercom.contacts == {}


def test_a_403_is_an_auth_error_naming_the_permission(intercom: IntercomFake) -> None:
    intercom.fail_next(403, {"type": "error.list", "errors": [{"code": "forbidden", "message": "no"}]})
    with pytest.raises(DestinationAuthError, match="Read and write users"):
        client(intercom).write([upsert(1)])


def test_a_wrong_address_is_systemic_naming_the_field(intercom: IntercomFake) -> None:
    config = IntercomDestinationConfig.model_validate(destination(intercom, base_url=intercom.url + "/v9"))
    with pytest.raises(SystemicError, match="destination.region and destination.base_url"):
        IntercomDestination(config, TOKEN).write([upsert(1)])


# ---- validate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"mapping": {"email": "email"}}, "the mapping has no field 'external_id'"),
        (
            {"mapping": {**MAPPING, "lead_score": "lead_score"}},
            "mapping.lead_score: an Intercom contact has no field",
        ),
        ({"mapping": {**MAPPING, "role": "email"}}, "or a custom attribute as custom_attributes.<its name>"),
        ({"destination_extra": {"api_version": 2.1}}, "quote the version"),
        ({"destination_extra": {"region": "de"}}, "destination.region"),
        (
            {"destination_extra": {"access_token": "tok_123"}},
            "destination.access_token: secrets are never written",
        ),
        ({"mode": "insert"}, "destination takes upsert or mirror, not insert"),
    ],
)
def test_validate_names_the_file_the_field_and_the_fix(
    tmp_path: Path, intercom: IntercomFake, change: dict[str, Any], says: str
) -> None:
    extra = change.pop("destination_extra", {})
    project(tmp_path, intercom, rows=1, destination=destination(intercom, **extra), **change)
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert says in str(caught.value) and "syncs/contacts.yaml" in str(caught.value), str(caught.value)


def test_validate_checks_the_token_it_reads_naming_the_field(
    tmp_path: Path,
    intercom: IntercomFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("INTERCOM_TOKEN", "Bearer abc123")
    root = project(tmp_path, intercom, rows=1)
    assert main(["--project", str(root), "validate"]) == 2
    out = capsys.readouterr()
    assert (
        "syncs/contacts.yaml: destination.access_token: the Intercom access token starts with 'Bearer '"
        in (out.out + out.err)
    )
    assert "abc123" not in out.out + out.err


def test_the_region_picks_the_host() -> None:
    base = {"type": "intercom", "access_token": "env:T"}
    hosts = {
        r: IntercomDestinationConfig.model_validate({**base, "region": r}).url for r in ("us", "eu", "au")
    }
    assert hosts == {
        "us": "https://api.intercom.io",
        "eu": "https://api.eu.intercom.io",
        "au": "https://api.au.intercom.io",
    }
