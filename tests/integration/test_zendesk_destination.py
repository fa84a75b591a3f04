"""Zendesk users end to end over loopback: the CLI and the state machine against the Zendesk fake,
jobs, ordered results, soft deletes, the job and rate limits, credentials, and what validate says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncback.cli import main
from syncback.destinations.base import Change, JobFailed
from syncback.destinations.zendesk.client import ZendeskDestination
from syncback.errors import ConfigError
from syncback.spec import load_project
from tests.conftest import contacts_rows, contacts_sync, run_json, write_contacts, write_project
from tests.fakes.zendesk import EMAIL, TOKEN, ZendeskFake
from tests.integration.sfn_harness import build_stack, mocked_aws, snapshot

MAPPING = {
    "external_id": "customer_id",
    "name": "first_name",
    "email": "email",
    "user_fields.lead_score": "lead_score",
}


@pytest.fixture
def zendesk(monkeypatch: pytest.MonkeyPatch) -> Iterator[ZendeskFake]:
    monkeypatch.setenv("ZENDESK_TOKEN", TOKEN)
    with ZendeskFake() as fake:
        yield fake


def destination(fake: ZendeskFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "zendesk",
        "subdomain": "acme",
        "base_url": fake.url,
        "email": EMAIL,
        "api_token": "env:ZENDESK_TOKEN",
        "poll_s": 0.02,
        **extra,
    }


def project(root: Path, fake: ZendeskFake, rows: int = 250, **sync: Any) -> Path:
    spec = contacts_sync(destination(fake), MAPPING, **{"guards": {"max_delete_pct": 20}, **sync})
    return write_project(root, spec, contacts_rows(rows))


def active(fake: ZendeskFake) -> dict[str, dict[str, Any]]:
    return {str(u["external_id"]): u for u in fake.users.values() if u["active"]}


def test_the_cli_creates_updates_and_soft_deletes_users_in_jobs(
    tmp_path: Path, zendesk: ZendeskFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, zendesk)
    # When the sync runs: Then 250 users are created in 3 jobs, found by external_id
    code, summary = run_json(root, capsys)
    assert code == 0 and (summary["delivered"], summary["rejected"]) == (250, 0), summary
    users = active(zendesk)
    assert len(users) == 250 and zendesk.counts["jobs"] == 3 and zendesk.counts["created"] == 250
    assert users["7"]["name"] == "First7" and users["7"]["user_fields"] == {"lead_score": 7}
    # When ten rows leave the model and one changes: Then those users are soft-deleted (destroy_many)
    # and the changed one updated by its Zendesk id (update_many); nobody is created again
    rows = contacts_rows(240)
    rows[0] = (1, "new-1@example.com", "Renamed", 99, None)
    write_contacts(root / "wh.duckdb", rows)
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["removed"] == 10 and summary["planned"]["changed"] == 1
    users = active(zendesk)
    assert len(users) == 240 and zendesk.counts["created"] == 250
    assert (users["1"]["name"], users["1"]["email"]) == ("Renamed", "new-1@example.com")
    assert sum(not u["active"] for u in zendesk.users.values()) == 10  # soft-deleted, kept
    # and a further run has nothing to do
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["unchanged"] == 240


def test_failed_results_are_rejections_with_zendesks_reason_matched_by_order(
    tmp_path: Path, zendesk: ZendeskFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, zendesk, rows=120)
    zendesk.reject_values = {"user13@example.com", "user101@example.com"}
    code, summary = run_json(root, capsys)
    assert code == 1 and (summary["delivered"], summary["rejected"]) == (118, 2), summary
    assert set(active(zendesk)) == {str(i) for i in range(1, 121)} - {"13", "101"}
    assert main(["--project", str(root), "dlq", "list", "contacts"]) == 0
    listing = capsys.readouterr().out
    assert "2 dead letter(s)" in listing and "UserUpdateError" in listing
    assert "user13@example.com" not in listing  # reasons are kept, values are not


def test_a_user_without_a_name_is_refused_by_zendesk_not_lost(
    tmp_path: Path, zendesk: ZendeskFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, zendesk, rows=3)
    write_contacts(
        root / "wh.duckdb", [(1, "a@example.com", "A", 1, None), (2, "b@example.com", None, 2, None)]
    )
    code, summary = run_json(root, capsys)
    assert code == 1 and (summary["delivered"], summary["rejected"]) == (1, 1)
    assert "Name: is too short" in summary["rejected_sample"][0]["reason"]


def test_the_job_limit_and_the_rate_limit_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZENDESK_TOKEN", TOKEN)
    # Given an account that takes 3 jobs at once and 20 requests a second, and a spec saying so
    with ZendeskFake(requests_per_minute=20, window_s=1.0, job_s=0.25, max_jobs=3) as fake:
        spec = destination(fake, max_jobs=3, concurrency=1, rate_limit={"requests": 20, "per_seconds": 1})
        root = project(tmp_path, fake, rows=1_500, destination=spec)
        code, summary = run_json(root, capsys)
        # Then 15 jobs ran, never more than 3 at once: no 429, for the job queue or the rate
        assert code == 0 and summary["delivered"] == 1_500, summary
        assert fake.counts["jobs"] == 15 and fake.counts["most_jobs"] <= 3 and fake.counts["429"] == 0


def test_a_full_job_queue_answers_429_and_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ZENDESK_TOKEN", TOKEN)
    # Given an account that takes 2 jobs at once, and a spec that believes it takes 30
    with ZendeskFake(job_s=0.3, max_jobs=2) as fake:
        root = project(tmp_path, fake, rows=500, destination=destination(fake, concurrency=1))
        code, summary = run_json(root, capsys)
        # Then the 429s were retried after Retry-After, and every user was created once
        assert code == 0 and summary["delivered"] == 500, summary
        assert fake.counts["created"] == 500 and fake.counts["429"] > 0


def test_oauth_tokens_are_sent_as_bearer_and_refused_credentials_stop_the_run(
    tmp_path: Path, zendesk: ZendeskFake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {k: v for k, v in destination(zendesk).items() if k not in ("email", "api_token")}
    root = project(tmp_path, zendesk, rows=10, destination={**spec, "oauth_token": "env:ZENDESK_TOKEN"})
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["delivered"] == 10
    # When the token is revoked: Then the run fails (exit 3) saying what to check, and sends nothing more
    monkeypatch.setenv("ZENDESK_TOKEN", "revoked")
    write_contacts(root / "wh.duckdb", contacts_rows(20))
    code, summary = run_json(root, capsys)
    assert code == 3 and summary["status"] == "failed" and "token" in summary["error"], summary
    assert len(active(zendesk)) == 10


def test_a_wrong_address_is_a_systemic_error_naming_the_subdomain(
    tmp_path: Path, zendesk: ZendeskFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(
        tmp_path, zendesk, rows=10, destination=destination(zendesk, base_url=zendesk.url + "/nope")
    )
    code, summary = run_json(root, capsys)
    assert code == 3 and "destination.subdomain" in summary["error"], summary
    assert zendesk.counts["requests"] <= 2 and summary["rejected"] == 0


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {"mapping": {**MAPPING, "role": "plan"}},
            "syncs/contacts.yaml: mapping.role: a Zendesk user has no field 'role'",
        ),
        ({"destination_extra": {"oauth_token": "env:X"}}, "syncs/contacts.yaml: destination: give either"),
        ({"mapping": {k: v for k, v in MAPPING.items() if k != "name"}}, "no field 'name'"),
        ({"mapping": {k: v for k, v in MAPPING.items() if k != "external_id"}}, "no field 'external_id'"),
        ({"destination_extra": {"oauth_token": "env:X"}}, "either email and api_token"),
        ({"destination_extra": {"email": None}}, "needs the e-mail of the agent"),
        ({"mode": "insert"}, "a zendesk destination takes upsert or mirror, not insert"),
        (
            {"destination_extra": {"subdomain": "acme.zendesk.com"}},
            "destination.subdomain: 'acme.zendesk.com' is not a subdomain: write just the account",
        ),
        (
            {"destination_extra": {"api_token": None}},
            "destination.api_token: missing; give email and api_token",
        ),
        ({"destination_extra": {"subdomian": "acme"}}, "(allowed: api_token, base_url, concurrency, email"),
        (
            {"destination_extra": {"object": "organizations", "identify_by": "email"}},
            "organizations are found by external_id only",
        ),
        (
            {"destination_extra": {"object": "organizations"}},
            "mapping.email: a Zendesk organization has no field 'email'",
        ),
    ],
)
def test_validate_names_the_field_and_the_fix(
    tmp_path: Path, zendesk: ZendeskFake, change: dict[str, Any], says: str
) -> None:
    extra = change.pop("destination_extra", {})
    project(tmp_path, zendesk, rows=1, destination=destination(zendesk, **extra), **change)
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert says in str(caught.value) and "syncs/contacts.yaml" in str(caught.value)


def test_results_are_matched_by_position_or_by_index() -> None:
    changes = [Change(str(i), "upsert", "h", {"external_id": i, "name": "n"}) for i in range(3)]
    client = ZendeskDestination.__new__(ZendeskDestination)
    client._kind = "user"
    ordered = [
        {"id": 10, "status": "Created"},
        {"id": 11, "status": "Updated"},
        {"status": "Failed", "error": "E"},
    ]
    whole = [("j", [0, 1, 2])]
    outcomes = client._job_outcomes(whole, changes, {"j": {"status": "completed", "results": ordered}})
    assert isinstance(outcomes, list)
    assert [(o.status, o.destination_id, o.created) for o in outcomes] == [
        ("delivered", "10", True),
        ("delivered", "11", False),
        ("rejected", None, None),
    ]
    indexed = [{"index": 2, "id": 12, "status": "Created"}, {"index": 0, "id": 10, "status": "Updated"}]
    outcomes = client._job_outcomes(whole, changes, {"j": {"status": "completed", "results": indexed}})
    assert isinstance(outcomes, list)
    assert [o.destination_id for o in outcomes] == ["10", None, "12"]
    assert outcomes[1].reason == "Zendesk's job did not report this user"


@pytest.mark.parametrize("kind", ["users", "organizations"])
def test_a_zendesk_sync_runs_through_the_state_machine(
    tmp_path: Path, zendesk: ZendeskFake, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    if kind == "organizations":  # one that exists: its batch is two jobs, an update and a create
        zendesk.organizations[1] = {"id": 1, "name": "Acme", "external_id": "3", "organization_fields": {}}
    spec = destination(zendesk, object=kind)
    mapping = MAPPING if kind == "users" else ORGANIZATION_MAPPING
    for _ in mocked_aws(monkeypatch):
        root = project(tmp_path, zendesk, rows=300, batch_size=100, destination=spec, mapping=mapping)
        stack = build_stack(load_project(root), None, monkeypatch)  # the real Zendesk client
        execution = stack.run()
        assert execution["status"] == "SUCCEEDED", execution
        run = json.loads(execution["output"])["run"]
        assert (run["status"], run["delivered"]) == ("succeeded", 300)
        # each batch: one pass submits its job, later passes poll it; the waits were the state machine's
        assert stack.invocations.count("deliver") >= 6
        held = active(zendesk) if kind == "users" else organizations(zendesk)
        assert len(held) == 300 and len(snapshot(stack.rt.project)) == 300


# ---- organizations -----------------------------------------------------------------------------

ORGANIZATION_MAPPING = {
    "external_id": "customer_id",
    "name": "first_name",
    "organization_fields.lead_score": "lead_score",
}


def organizations(fake: ZendeskFake) -> dict[str, dict[str, Any]]:
    return {str(o["external_id"]): o for o in fake.organizations.values()}


def test_organizations_are_found_by_external_id_updated_by_id_or_created_and_deleted_in_jobs(
    tmp_path: Path, zendesk: ZendeskFake, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an organization a person made, with the external_id of row 3
    zendesk.organizations[1] = {"id": 1, "name": "Acme", "external_id": "3", "organization_fields": {}}
    spec = destination(zendesk, object="organizations")
    root = project(tmp_path, zendesk, rows=150, destination=spec, mapping=ORGANIZATION_MAPPING)
    # When the sync runs: Then each 100 are looked up in one request; row 3's is updated by its id
    # and the rest created: 3 jobs (the first 100: one update, one create; the last 50: one create)
    code, summary = run_json(root, capsys)
    assert code == 0 and (summary["delivered"], summary["rejected"]) == (150, 0), summary
    orgs = organizations(zendesk)
    assert len(orgs) == 150 and zendesk.counts["created"] == 149 and zendesk.counts["jobs"] == 3
    assert (orgs["3"]["id"], orgs["3"]["name"]) == (1, "First3")
    assert orgs["7"]["organization_fields"] == {"lead_score": 7}
    # When ten rows leave the model (row 3 among them) and one changes: Then the nine this sync
    # created are deleted, the person's is kept, and the changed one is updated by its id
    rows = [r for r in contacts_rows(160) if r[0] not in range(1, 11)]
    rows[0] = (11, "x@example.com", "Renamed", 99, None)
    write_contacts(root / "wh.duckdb", rows)
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["removed"] == 10, summary
    orgs = organizations(zendesk)
    assert set(orgs) == {str(i) for i in range(11, 161)} | {"3"}
    assert orgs["11"]["name"] == "Renamed" and zendesk.counts["created"] == 159


def test_an_organization_whose_name_another_holds_is_refused_with_zendesks_reason(
    tmp_path: Path, zendesk: ZendeskFake, capsys: pytest.CaptureFixture[str]
) -> None:
    zendesk.organizations[1] = {"id": 1, "name": "first5", "external_id": None, "organization_fields": {}}
    spec = destination(zendesk, object="organizations")
    root = project(tmp_path, zendesk, rows=8, destination=spec, mapping=ORGANIZATION_MAPPING)
    code, summary = run_json(root, capsys)
    assert code == 1 and (summary["delivered"], summary["rejected"]) == (7, 1), summary
    assert summary["rejected_sample"] == [
        {"key": "5", "reason": "OrganizationUpdateError: Name: has already been taken"}
    ]


def test_a_submission_of_two_jobs_waits_for_both_and_is_submitted_again_if_one_fails() -> None:
    changes = [Change(str(i), "upsert", "h", {"external_id": i, "name": "n"}) for i in range(3)]
    client = ZendeskDestination.__new__(ZendeskDestination)
    client._kind = "organization"
    parts = [("u", [1]), ("c", [0, 2])]
    done = {"status": "completed", "results": [{"id": 5, "status": "Updated"}]}
    created = {
        "status": "completed",
        "results": [{"id": 6, "status": "Created"}, {"id": 7, "status": "Created"}],
    }
    assert client._job_outcomes(parts, changes, {"u": done, "c": {"status": "working"}}) is None
    failed = client._job_outcomes(parts, changes, {"u": done, "c": {"status": "failed", "message": "x"}})
    assert isinstance(failed, JobFailed)
    outcomes = client._job_outcomes(parts, changes, {"u": done, "c": created})
    assert isinstance(outcomes, list)
    assert [(o.key, o.destination_id, o.created) for o in outcomes] == [
        ("0", "6", True),
        ("1", "5", False),
        ("2", "7", True),
    ]
