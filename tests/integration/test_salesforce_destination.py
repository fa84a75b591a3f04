"""Salesforce end to end over loopback: the CLI and the state machine against the Salesforce fake,
both OAuth flows, token renewal, the org's request limit, locked rows, per-record errors, and what
validate says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncback.cli import main
from syncback.errors import ConfigError
from syncback.spec import load_project
from tests.conftest import contacts_rows, contacts_sync, run_json, write_contacts, write_project
from tests.fakes.salesforce import CLIENT_ID, CLIENT_SECRET, PRIVATE_KEY_PEM, USERNAME, SalesforceFake
from tests.integration.sfn_harness import build_stack, mocked_aws, snapshot

MAPPING = {
    "Customer_Key__c": "customer_id",
    "LastName": "first_name",
    "Email": "email",
    "Lead_Score__c": "lead_score",
}


@pytest.fixture
def org(monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceFake]:
    monkeypatch.setenv("SF_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("SF_KEY", PRIVATE_KEY_PEM)
    with SalesforceFake() as fake:
        yield fake


def destination(fake: SalesforceFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "salesforce",
        "object": "Contact",
        "external_id_field": "Customer_Key__c",
        "login_url": fake.url,
        "auth": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": "env:SF_SECRET",
        **extra,
    }


JWT = {"auth": "jwt_bearer", "client_secret": None, "username": USERNAME, "private_key": "env:SF_KEY"}


def project(root: Path, fake: SalesforceFake, rows: int = 450, **sync: Any) -> Path:
    spec = contacts_sync(destination(fake), MAPPING, **{"guards": {"max_delete_pct": 20}, **sync})
    return write_project(root, spec, contacts_rows(rows))


def contacts(fake: SalesforceFake) -> dict[str, dict[str, Any]]:
    return {str(r["Customer_Key__c"]): r for r in fake.live("Contact")}


def test_the_cli_upserts_by_external_id_and_deletes_for_mirror(
    tmp_path: Path, org: SalesforceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, org)
    # When the sync runs: Then 450 contacts are created in 3 requests of at most 200
    code, summary = run_json(root, capsys)
    assert code == 0 and (summary["delivered"], summary["rejected"]) == (450, 0), summary
    held = contacts(org)
    assert len(held) == 450 and org.counts["created"] == 450 and org.counts["requests"] == 3
    assert (held["7"]["LastName"], held["7"]["Email"], held["7"]["Lead_Score__c"]) == (
        "First7",
        "user7@example.com",
        7,
    )
    # When ten rows leave and one changes: Then those are deleted by their Salesforce ids, the
    # changed one updated by its id; nothing is created again; one token served every request
    rows = contacts_rows(440)
    rows[0] = (1, "new-1@example.com", "Renamed", 99, None)
    write_contacts(root / "wh.duckdb", rows)
    code, summary = run_json(root, capsys)
    assert code == 0 and (summary["planned"]["removed"], summary["planned"]["changed"]) == (10, 1)
    held = contacts(org)
    assert len(held) == 440 and org.counts["created"] == 450 and held["1"]["Email"] == "new-1@example.com"
    assert org.counts["tokens"] == 1
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["unchanged"] == 440


def test_the_jwt_bearer_flow_signs_an_assertion_the_org_verifies(
    tmp_path: Path, org: SalesforceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, org, rows=20, destination=destination(org, **JWT))
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["delivered"] == 20 and org.counts["tokens"] == 1


def test_an_expired_session_is_renewed_once_and_a_second_refusal_fails_the_run(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, org, rows=20)
    assert run_json(root, capsys)[0] == 0
    # Given the session expired: When the next run sends, Then it renews the token once and goes on
    org.revoke()
    write_contacts(root / "wh.duckdb", contacts_rows(30))
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["delivered"] == 10 and org.counts["tokens"] == 2
    # Given every new session is refused too: Then the run fails (exit 3), nothing is a dead letter
    real_token = org._token

    def token_then_revoke(form: dict[str, str]) -> Any:
        answer = real_token(form)
        org._tokens.clear()
        return answer

    monkeypatch.setattr(org, "_token", token_then_revoke)
    org.revoke()
    write_contacts(root / "wh.duckdb", contacts_rows(40))
    code, summary = run_json(root, capsys)
    assert code == 3 and summary["status"] == "failed" and "refused too" in summary["error"], summary
    assert summary["rejected"] == 0 and len(contacts(org)) == 30


def test_the_orgs_request_limit_stops_the_run_with_the_usage_never_a_retry_storm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SF_SECRET", CLIENT_SECRET)
    with SalesforceFake(daily_limit=2) as org:
        root = project(tmp_path, org, rows=1_000, destination=destination(org, concurrency=1))
        code, summary = run_json(root, capsys)
        assert code == 3 and summary["status"] == "failed", summary
        assert "REQUEST_LIMIT_EXCEEDED" in summary["error"] and "api-usage=2/2" in summary["error"]
        assert summary["delivered"] == 400 and org.counts["requests"] == 3
    # what was delivered is kept: the snapshot holds it
    assert len(load_project(root).syncs) == 1


def test_a_locked_row_is_sent_again_and_if_it_stays_locked_the_next_run_sends_it(
    tmp_path: Path, org: SalesforceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, org, rows=50)
    org.lock_values = {"user5@example.com": 1, "user9@example.com": 10}
    code, summary = run_json(root, capsys)
    # row 5 was locked once and went through; row 9 stayed locked: undelivered, not a dead letter
    assert (summary["delivered"], summary["rejected"], summary["undelivered"]) == (49, 0, 1), summary
    assert "5" in contacts(org) and "9" not in contacts(org)
    org.lock_values = {}
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["added"] == 1 and "9" in contacts(org)


def test_per_record_errors_are_rejections_with_salesforces_reason(
    tmp_path: Path, org: SalesforceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, org, rows=30)
    org.reject_values = {"user3@example.com"}
    # two records already hold external id 12: Salesforce cannot tell which to update
    org.add("Contact", Customer_Key__c="12")
    org.add("Contact", Customer_Key__c="12")
    code, summary = run_json(root, capsys)
    assert code == 1 and (summary["delivered"], summary["rejected"]) == (28, 2), summary
    reasons = {item["key"]: item["reason"] for item in summary["rejected_sample"]}
    assert reasons["3"].startswith("FIELD_CUSTOM_VALIDATION_EXCEPTION")
    assert reasons["12"].startswith("DUPLICATE_EXTERNAL_ID") and "user12" not in reasons["12"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"object": "Contactt"}, "destination.object"),
        ({"external_id_field": "Nope__c"}, "destination.external_id_field"),
    ],
)
def test_a_wrong_object_or_field_is_a_systemic_error(
    tmp_path: Path, org: SalesforceFake, capsys: pytest.CaptureFixture[str], change: dict[str, Any], says: str
) -> None:
    mapping = {**MAPPING, "Nope__c": MAPPING["Customer_Key__c"]} if "external_id_field" in change else MAPPING
    root = project(tmp_path, org, rows=500, destination=destination(org, **change), mapping=mapping)
    code, summary = run_json(root, capsys)
    assert code == 3 and says in summary["error"] and summary["rejected"] == 0, summary
    assert org.counts["requests"] <= 3


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"client_secret": None}, "auth client_credentials needs the consumer secret"),
        ({**JWT, "username": None}, "destination.username: auth jwt_bearer needs the user the app acts as"),
        ({**JWT, "private_key": None}, "destination.private_key: auth jwt_bearer needs the key"),
        # a misspelled key lists Salesforce's own fields, not another destination's
        (
            {"externalid_field": "X"},
            "unknown field; remove it or check its spelling (allowed: api_version, auth, bulk_above",
        ),
        ({"object": "Contact; drop"}, "destination.object"),
    ],
)
def test_validate_names_the_field_and_the_fix(
    tmp_path: Path, org: SalesforceFake, change: dict[str, Any], says: str
) -> None:
    project(tmp_path, org, rows=1, destination=destination(org, **change))
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert says in str(caught.value) and "syncs/contacts.yaml" in str(caught.value)


def test_an_unquoted_api_version_is_taken_as_the_version_it_means(
    tmp_path: Path, org: SalesforceFake
) -> None:
    project(tmp_path, org, rows=1, destination=destination(org, api_version=62.0))
    assert load_project(tmp_path).sync("contacts").destination.api_version == "62.0"  # type: ignore[union-attr]


def test_validate_refuses_a_mapping_without_the_external_id_and_a_key_that_is_not_one(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project(tmp_path, org, rows=1, mapping={k: v for k, v in MAPPING.items() if k != "Customer_Key__c"})
    with pytest.raises(ConfigError, match="the mapping has no field 'Customer_Key__c'"):
        load_project(tmp_path)
    project(tmp_path, org, rows=1, destination=destination(org, **JWT))
    monkeypatch.setenv("SF_KEY", "not a key")
    assert main(["--project", str(tmp_path), "validate"]) == 2
    assert "destination.private_key is not an unencrypted PEM private key" in capsys.readouterr().err


def test_a_salesforce_sync_runs_through_the_state_machine(
    tmp_path: Path, org: SalesforceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in mocked_aws(monkeypatch):
        root = project(tmp_path, org, rows=500, batch_size=250)
        stack = build_stack(load_project(root), None, monkeypatch)  # the real Salesforce client
        execution = stack.run()
        assert execution["status"] == "SUCCEEDED", execution
        run = json.loads(execution["output"])["run"]
        assert (run["status"], run["delivered"]) == ("succeeded", 500)
        assert len(contacts(org)) == 500 and len(snapshot(stack.rt.project)) == 500
