"""Meta Custom Audiences end to end over loopback: the CLI and the state machine against the Meta
fake, hashes made in the warehouse (no plain address anywhere outside it), 10,000 rows a request,
members moved and removed by their hashes, Meta's aggregate answers matched back to records, how
each Graph error is classified, and what validate says."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncback.batches import LocalBatchStore
from syncback.cli import main
from syncback.destinations.base import Change
from syncback.destinations.meta_audience import MetaAudienceDestinationConfig
from syncback.destinations.meta_audience.client import MetaAudienceDestination
from syncback.errors import (
    ConfigError,
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SecretError,
    SystemicError,
)
from syncback.spec import load_project
from tests.conftest import contacts_rows, contacts_sync, run_json, write_contacts, write_project
from tests.fakes.meta_audience import AUDIENCE, TOKEN, MetaAudienceFake, email_hash, text_hash
from tests.integration.sfn_harness import build_stack, mocked_aws, snapshot
from tests.unit.test_audience_hashing import emails

#: a "high LTV" audience: who they are, hashed; matched by e-mail first
MAPPING = {"EMAIL": "email", "EXTERN_ID": "customer_id", "FN": "first_name"}
HIGH_LTV = "select * from analytics.contacts where lifetime_value >= 30"


@pytest.fixture
def meta(monkeypatch: pytest.MonkeyPatch) -> Iterator[MetaAudienceFake]:
    monkeypatch.setenv("META_TOKEN", TOKEN)
    with MetaAudienceFake() as fake:
        yield fake


def destination(fake: MetaAudienceFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "meta_audience",
        "audience_id": AUDIENCE,
        "access_token": "env:META_TOKEN",
        "base_url": fake.url,
        "timeout_s": 2,
        **extra,
    }


def project(
    root: Path, fake: MetaAudienceFake, rows: list[tuple[Any, ...]] | None = None, **sync: Any
) -> Path:
    spec = contacts_sync(destination(fake, batch_size=80), MAPPING, **sync)
    if spec.get("table") is None:
        spec.pop("table")
    return write_project(root, spec, contacts_rows(200) if rows is None else rows)


def client(
    fake: MetaAudienceFake, schema: tuple[str, ...] = ("EMAIL", "FN"), **extra: Any
) -> MetaAudienceDestination:
    config = MetaAudienceDestinationConfig.model_validate(destination(fake, **extra))
    return MetaAudienceDestination(config, TOKEN, list(schema), "EMAIL")


def adds(*keys: int) -> list[Change]:
    return [
        Change(str(k), "upsert", "h", {"EMAIL": email_hash(f"u{k}@x.io"), "FN": text_hash(f"F{k}")})
        for k in keys
    ]


def sent(fake: MetaAudienceFake, method: str = "POST") -> list[dict[str, Any]]:
    return [payload for m, payload in fake.received if m == method]


# ---- end to end ------------------------------------------------------------------------------------


def test_the_cli_adds_hashed_members_80_a_request_moves_and_removes_them_by_hash(
    tmp_path: Path, meta: MetaAudienceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, meta)
    # When the sync runs: Then 200 members are added in requests of 80, 80 and 40, every key hashed
    code, summary = run_json(root, capsys)
    assert code == 0 and (summary["delivered"], summary["rejected"]) == (200, 0), summary
    assert sorted(len(p["data"]) for p in sent(meta)) == [40, 80, 80]
    assert sent(meta)[0]["schema"] == ["EMAIL", "EXTERN_ID", "FN"]
    seven = meta.members[email_hash("user7@example.com")]
    assert seven == {
        "EMAIL": hashlib.sha256(b"user7@example.com").hexdigest(),
        "EXTERN_ID": hashlib.sha256(b"7").hexdigest(),
        "FN": hashlib.sha256(b"first7").hexdigest(),
    }
    # the snapshot names each member by its identity hash: Meta keeps no member id
    snap = {key: dest for key, (_, dest) in snapshot_rows(root).items()}
    assert snap["7"] == seven["EMAIL"]
    # When ten rows leave and one changes its e-mail
    rows = contacts_rows(190)
    rows[0] = (1, "New-1@Example.com ", "First1", 1, None)
    write_contacts(root / "wh.duckdb", rows)
    meta.received.clear()
    code, summary = run_json(root, capsys)
    # Then the ten are removed by their hash, and the moved member is removed by its old hash and
    # added by its new one; nobody else is touched
    assert code == 0 and summary["planned"]["removed"] == 10 and summary["planned"]["changed"] == 1, summary
    removed = [row[0] for p in sent(meta, "DELETE") for row in p["data"]]
    assert set(removed) == {email_hash(f"user{i}@example.com") for i in [*range(191, 201), 1]}
    assert all(p["schema"] == ["EMAIL"] for p in sent(meta, "DELETE"))
    assert len(meta.members) == 190 and email_hash("new-1@example.com") in meta.members
    assert email_hash("user1@example.com") not in meta.members
    # and a further run has nothing to do
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["unchanged"] == 190


def snapshot_rows(root: Path) -> dict[str, tuple[str | None, str | None]]:
    import duckdb

    con = duckdb.connect(str(root / "wh.duckdb"), read_only=True)
    try:
        rows = con.execute("select key, identity, destination_id from syncback.snapshot__contacts").fetchall()
    finally:
        con.close()
    return {key: (identity, dest) for key, identity, dest in rows}


def test_two_rows_whose_emails_normalise_equal_are_one_member_and_the_second_is_invalid(
    tmp_path: Path, meta: MetaAudienceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [(1, "Ann@Example.com", "Ann", 1, 50.0), (2, "  ann@example.COM\t", "Annie", 2, 60.0)]
    root = project(tmp_path, meta, rows)
    code, summary = run_json(root, capsys)
    assert code == 1 and summary["planned"]["invalid"] == 1 and summary["delivered"] == 1, summary
    assert list(meta.members) == [email_hash("ann@example.com")]
    assert "ann@example" not in json.dumps(summary).lower()


def test_a_model_query_builds_a_high_ltv_audience_and_mirror_removes_who_drops_below(
    tmp_path: Path, meta: MetaAudienceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [(i, f"c{i}@shop.example", f"C{i}", i, float(i * 10)) for i in range(1, 11)]
    root = project(tmp_path, meta, rows, table=None, model=HIGH_LTV, guards={"max_delete_pct": 50})
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["delivered"] == 8 and len(meta.members) == 8  # LTV 30 … 100
    # When two customers' value drops: Then they leave the audience
    rows[8] = (9, "c9@shop.example", "C9", 9, 5.0)
    rows[9] = (10, "c10@shop.example", "C10", 10, 5.0)
    write_contacts(root / "wh.duckdb", rows)
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["removed"] == 2 and len(meta.members) == 6, summary


def test_a_meta_sync_runs_through_the_state_machine(
    tmp_path: Path, meta: MetaAudienceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in mocked_aws(monkeypatch):
        root = project(tmp_path, meta, contacts_rows(300), batch_size=100)
        stack = build_stack(load_project(root), None, monkeypatch)  # the real Meta client
        execution = stack.run()
        assert execution["status"] == "SUCCEEDED", execution
        run = json.loads(execution["output"])["run"]
        assert (run["status"], run["delivered"]) == ("succeeded", 300)
        # batches of 100 go out as 80 + 20 each
        assert sorted(len(p["data"]) for p in sent(meta)) == [20, 20, 20, 80, 80, 80]
        assert len(meta.members) == 300 and len(snapshot(stack.rt.project)) == 300


def test_a_flagged_audience_fails_the_state_machine_run_with_the_fix(
    tmp_path: Path, meta: MetaAudienceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta.flagged = True
    for _ in mocked_aws(monkeypatch):
        root = project(tmp_path, meta, contacts_rows(50))
        stack = build_stack(load_project(root), None, monkeypatch)
        execution = stack.run()
        assert execution["status"] == "FAILED"
        (record,) = stack.rt.state.runs("contacts")
        assert record.status == "failed" and "destination.audience_id" in (record.error or "")
        assert "health or financial" in (record.error or "") and (record.rejected, record.undelivered) == (
            0,
            50,
        )
        assert stack.drain(stack.dead_letter_queue) == [] and meta.members == {}


# ---- nothing plain outside the warehouse ----------------------------------------------------------


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(addresses=st.lists(emails(), min_size=3, max_size=6), refused=st.integers(0, 2))
def test_no_plain_address_is_stored_or_logged_after_a_run_with_rejections(
    meta: MetaAudienceFake,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    addresses: list[str],
    refused: int,
) -> None:
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="syncback")
    monkeypatch.setattr(logging.getLogger("syncback"), "propagate", True)
    # batches are deleted once committed: keep them, so that they are searched too
    monkeypatch.setattr(LocalBatchStore, "remove_batches", lambda self, sync, run_id: None)
    rows = [(i, address, f"Name{i}", i, 100.0) for i, address in enumerate(addresses, start=1)]
    meta.reject({addresses[refused]})
    with tempfile.TemporaryDirectory() as folder:
        root = project(Path(folder), meta, rows, mode="upsert")
        # When the plan is shown, the sync runs (one member refused) and the dead letters are listed
        main(["--project", str(root), "plan", "contacts", "--json", "--sample", "10"])
        main(["--project", str(root), "run", "contacts", "--json"])
        main(["--project", str(root), "dlq", "list", "contacts"])
        stored = [
            p.read_bytes().decode(errors="replace") for p in (root / ".syncback").rglob("*") if p.is_file()
        ]
        stored += [p.read_text() for p in (root / "syncs").glob("*")]
    printed = capsys.readouterr()
    meta.reject(set())
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    everything = "\n".join([*stored, printed.out, printed.err, logged]).lower()
    # Then the refused member is a dead letter, and no address appears anywhere, in any form
    assert "entry refused" in everything and stored
    for address in addresses:
        normalised = "".join(address.split()).lower()
        assert normalised not in everything and address.strip().lower() not in everything
    # and what Meta received is Python's SHA-256 of each normalised address
    received = {row[0] for payload in sent(meta) for row in payload["data"]}
    assert {hashlib.sha256("".join(a.split()).lower().encode()).hexdigest() for a in addresses} <= received


# ---- Meta's aggregate answers ----------------------------------------------------------------------


def test_invalid_entry_samples_reject_their_records_with_metas_reason(meta: MetaAudienceFake) -> None:
    meta.reject({"u2@x.io", "u4@x.io"})
    outcomes = client(meta).write(adds(1, 2, 3, 4))
    assert [o.status for o in outcomes] == ["delivered", "rejected", "delivered", "rejected"]
    assert outcomes[1].reason == "Meta: Entry refused"
    assert outcomes[0].destination_id == email_hash("u1@x.io") and len(meta.received) == 1


def test_invalid_entries_meta_does_not_name_are_found_by_splitting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("META_TOKEN", TOKEN)
    # Given an audience that counts invalid entries but names none of them
    with MetaAudienceFake(max_samples=0) as fake:
        fake.reject({"user13@example.com", "user61@example.com"})
        with pytest.raises(RequestRejected, match="2 of 80 entries invalid, 2 not named"):
            client(fake, schema=("EMAIL",)).write(
                [
                    Change(str(i), "upsert", "h", {"EMAIL": email_hash(f"user{i}@example.com")})
                    for i in range(1, 81)
                ]
            )
        root = project(tmp_path, fake, contacts_rows(80))
        code, summary = run_json(root, capsys)
        # Then the delivery splits the request until each is alone: exactly those two are rejected
        assert code == 1 and (summary["delivered"], summary["rejected"]) == (78, 2), summary
        assert len(fake.members) == 78
    assert main(["--project", str(root), "dlq", "list", "contacts"]) == 0
    assert "counted this entry invalid without saying why" in capsys.readouterr().out


def test_a_removal_meta_refuses_is_rejected_and_the_rest_removed(meta: MetaAudienceFake) -> None:
    client(meta).write(adds(1, 2))
    # Meta counts u1's entry invalid, naming it (as it would a malformed hash)
    meta.fail_next(
        200,
        {
            "num_received": 2,
            "num_invalid_entries": 1,
            "invalid_entry_samples": {email_hash("u1@x.io"): "Entry refused"},
        },
    )
    removals = [Change(k, "archive", destination_id=email_hash(f"u{k}@x.io")) for k in ("1", "2")]
    removals.append(Change("3", "archive"))
    outcomes = client(meta).write(removals)
    assert [o.status for o in outcomes] == ["rejected", "delivered", "skipped"]
    assert outcomes[0].reason == "Meta: Entry refused"


# ---- Graph errors, classified ---------------------------------------------------------------------------


def graph_error(code: int, subcode: int | None = None, message: str = "x", **extra: Any) -> dict[str, Any]:
    error = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbC", **extra}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


def test_a_bad_token_stops_the_run_naming_the_access_token(
    tmp_path: Path,
    meta: MetaAudienceFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("META_TOKEN", "EAAB-revoked")
    root = project(tmp_path, meta, contacts_rows(10))
    code, summary = run_json(root, capsys)
    assert code == 3 and summary["status"] == "failed" and "destination.access_token" in summary["error"], (
        summary
    )
    assert "EAAB-revoked" not in json.dumps(summary) and meta.members == {}


@pytest.mark.parametrize("code", [10, 200, 294])
def test_a_missing_permission_is_an_auth_error_naming_ads_management(
    meta: MetaAudienceFake, code: int
) -> None:
    meta.fail_next(403 if code == 10 else 400, graph_error(code, message="(#200) Permissions error"))
    with pytest.raises(DestinationAuthError, match="ads_management"):
        client(meta).write(adds(1))


@pytest.mark.parametrize(
    ("code", "subcode"), [(4, 1504022), (17, 2446079), (32, None), (613, 1487742), (80003, None)]
)
def test_throttles_are_rate_limited_and_wait_what_meta_says(
    meta: MetaAudienceFake, code: int, subcode: int
) -> None:
    usage = {"123": [{"type": "custom_audience", "call_count": 100, "estimated_time_to_regain_access": 3}]}
    meta.fail_next(400, graph_error(code, subcode), headers={"x-business-use-case-usage": json.dumps(usage)})
    with pytest.raises(RateLimited) as caught:
        client(meta).write(adds(1))
    assert caught.value.retry_after == 180.0 and meta.members == {}


def test_a_throttle_without_usage_header_backs_off_as_the_delivery_does(meta: MetaAudienceFake) -> None:
    meta.fail_next(400, graph_error(80003), headers={"x-business-use-case-usage": "not json"})
    with pytest.raises(RateLimited) as caught:
        client(meta).write(adds(1))
    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, graph_error(2, is_transient=True)),
        (500, graph_error(1, message="An unknown error occurred")),
        (400, graph_error(2, message="Service temporarily unavailable")),
        (503, {}),
    ],
)
def test_5xx_and_codes_1_and_2_are_unavailable(
    meta: MetaAudienceFake, status: int, body: dict[str, Any]
) -> None:
    meta.fail_next(status, body)
    with pytest.raises(DestinationUnavailable):
        client(meta).write(adds(1))


def test_an_answer_later_than_the_timeout_is_unavailable(meta: MetaAudienceFake) -> None:
    meta.inject(0, 0, 1.0, seed=1)
    meta.late_s = 1.0
    with pytest.raises(DestinationUnavailable, match="no answer"):
        client(meta, timeout_s=0.2).write(adds(1))


def test_a_flagged_audience_is_systemic_with_the_fix(
    tmp_path: Path, meta: MetaAudienceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    meta.flagged = True
    with pytest.raises(SystemicError) as caught:
        client(meta).write(adds(1))
    assert caught.value.field == "destination.audience_id" and "operation_status 471" in str(caught.value)
    assert "Audience Manager" in str(caught.value)
    root = project(tmp_path, meta, contacts_rows(10))
    code, summary = run_json(root, capsys)
    assert code != 0 and "health or financial" in summary["error"] and summary["rejected"] == 0, summary


def test_an_invalid_parameter_is_a_request_rejected(meta: MetaAudienceFake) -> None:
    meta.fail_next(400, graph_error(100, message="(#100) Invalid parameter"))
    with pytest.raises(RequestRejected, match="code 100"):
        client(meta).write(adds(1, 2))


def test_another_audience_is_systemic_naming_the_audience_id(meta: MetaAudienceFake) -> None:
    with pytest.raises(SystemicError) as caught:
        client(meta, audience_id="99999999").write(adds(1))
    assert caught.value.field == "destination.audience_id"


def test_an_unknown_version_is_systemic_naming_the_api_version(meta: MetaAudienceFake) -> None:
    meta.fail_next(400, graph_error(2635, message="(#2635) You are calling a deprecated version"))
    with pytest.raises(SystemicError) as caught:
        client(meta).write(adds(1))
    assert caught.value.field == "destination.api_version"


def test_more_rows_than_meta_takes_is_refused_before_sending(meta: MetaAudienceFake) -> None:
    with pytest.raises(ValueError, match="at most 80"):
        client(meta, batch_size=80).write(adds(*range(81)))
    assert meta.counts["requests"] == 0


def test_error_messages_carry_no_hash_and_no_token(meta: MetaAudienceFake) -> None:
    changes = adds(1)
    meta.fail_next(400, graph_error(100, message=f"bad {changes[0].record['EMAIL']} with {TOKEN}"))
    with pytest.raises(RequestRejected) as caught:
        client(meta).write(changes)
    assert changes[0].record["EMAIL"] not in str(caught.value) and TOKEN not in str(caught.value)


# ---- what the client sends ------------------------------------------------------------------------


def test_a_row_without_its_identity_key_is_rejected_unsent_and_blanks_fill_unknown_keys(
    meta: MetaAudienceFake,
) -> None:
    changes = [
        Change("1", "upsert", "h", {"EMAIL": None, "FN": text_hash("a")}),
        Change("2", "upsert", "h", {"EMAIL": email_hash("b@x.io"), "FN": None}),
    ]
    outcomes = client(meta).write(changes)
    assert [o.status for o in outcomes] == ["rejected", "delivered"]
    assert sent(meta) == [{"schema": ["EMAIL", "FN"], "data": [[email_hash("b@x.io"), ""]]}]


def test_a_clear_is_skipped_without_a_request(meta: MetaAudienceFake) -> None:
    outcomes = client(meta).write([Change("1", "clear", None, {"FN": None}, "h")])
    assert [o.status for o in outcomes] == ["skipped"] and meta.counts["requests"] == 0


def test_a_release_removes_the_member_by_its_old_hash(meta: MetaAudienceFake) -> None:
    # phase 1 of a move: the old hash goes; the new row is added in phase 2
    client(meta).write(adds(1))
    (outcome,) = client(meta).write([Change("1", "release", None, {"EMAIL": None}, email_hash("u1@x.io"))])
    assert outcome.status == "delivered" and meta.members == {}
    assert sent(meta, "DELETE") == [{"schema": ["EMAIL"], "data": [[email_hash("u1@x.io")]]}]


# ---- validate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"mapping": {"FN": "first_name"}}, "mapping: the mapping has none of EMAIL, PHONE or EXTERN_ID"),
        (
            {"mapping": {**MAPPING, "email": "email"}},
            "mapping.email: a Meta audience member has no key 'email' (did you mean EMAIL?)",
        ),
        (
            {"mapping": {**MAPPING, "ltv": "lifetime_value"}},
            "mapping.ltv: a Meta audience member has no key 'ltv'",
        ),
        (
            {"mapping": {**MAPPING, "MADID": "email"}},
            "mapping.MADID: Meta takes mobile advertiser ids unhashed",
        ),
        (
            {"mapping": {**MAPPING, "EMAIL": {"column": "email", "transform": ["trim", "sha256"]}}},
            "mapping.EMAIL: a meta_audience destination normalises and hashes EMAIL itself; remove the sha256",
        ),
        (
            {"primary_key": "email", "mapping": {**MAPPING, "EXTERN_ID": "customer_id"}},
            "primary_key: email is mapped to EMAIL, which the warehouse hashes before it leaves",
        ),
        ({"mode": "insert"}, "a meta_audience destination takes upsert or mirror, not insert"),
        (
            {"destination_extra": {"batch_size": 20_000}},
            "destination.batch_size: Input should be less than or equal to 10000",
        ),
        (
            {"destination_extra": {"api_version": "25"}},
            "destination.api_version: String should match pattern",
        ),
        (
            {"destination_extra": {"audience_id": "my-audience"}},
            "destination.audience_id: String should match pattern",
        ),
        (
            {"destination_extra": {"access_token": "EAABsecret"}},
            "destination.access_token: secrets are never written",
        ),
        (
            {"destination_extra": {"ad_account_id": "1234"}},
            "destination.ad_account_id: String should match pattern",
        ),
    ],
)
def test_validate_names_the_file_the_field_and_the_fix(
    tmp_path: Path, meta: MetaAudienceFake, change: dict[str, Any], says: str
) -> None:
    extra = change.pop("destination_extra", {})
    project(tmp_path, meta, contacts_rows(1), destination=destination(meta, **extra), **change)
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert says in str(caught.value) and "syncs/contacts.yaml" in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("token", "says"), [("Bearer EAAB", "starts with 'Bearer '"), ("EAAB x", "white space"), (" ", "empty")]
)
def test_a_token_that_cannot_work_is_a_secret_error_without_the_token(
    tmp_path: Path, meta: MetaAudienceFake, monkeypatch: pytest.MonkeyPatch, token: str, says: str
) -> None:
    from syncback.destinations.registry import build_destination
    from syncback.secrets import SecretResolver

    root = project(tmp_path, meta, contacts_rows(1))
    sync = load_project(root).sync("contacts")
    with pytest.raises(SecretError, match=says) as caught:
        build_destination(sync, SecretResolver(environ={"META_TOKEN": token}))
    assert "destination.access_token" in str(caught.value)


def test_a_sample_named_by_a_value_many_rows_share_rejects_only_the_member_it_names(
    meta: MetaAudienceFake,
) -> None:
    # Given three rows sharing a first name, and Meta naming one invalid entry by its e-mail hash
    changes = [
        Change(str(k), "upsert", "h", {"EMAIL": email_hash(f"u{k}@x.io"), "FN": text_hash("ann")})
        for k in (1, 2, 3)
    ]
    meta.fail_next(
        200,
        {
            "audience_id": AUDIENCE,
            "session_id": "1",
            "num_received": 3,
            "num_invalid_entries": 1,
            "invalid_entry_samples": {email_hash("u2@x.io"): "Invalid entry"},
        },
    )
    outcomes = client(meta).write(changes)
    assert [o.status for o in outcomes] == ["delivered", "rejected", "delivered"]
    # and a sample named by the shared value, when no identity matches, rejects every row holding it
    meta.fail_next(
        200,
        {
            "num_received": 3,
            "num_invalid_entries": 3,
            "invalid_entry_samples": {text_hash("ann"): "Invalid FN"},
        },
    )
    assert [o.status for o in client(meta).write(changes)] == ["rejected"] * 3


def test_one_call_mixing_a_release_an_update_and_a_clear_removes_first_then_adds(
    meta: MetaAudienceFake,
) -> None:
    client(meta).write(adds(1, 2))
    changes = [
        Change(
            "1",
            "upsert",
            "h",
            {"EMAIL": email_hash("u1@x.io"), "FN": text_hash("new")},
            email_hash("u1@x.io"),
        ),
        Change("2", "release", None, {"EMAIL": None}, email_hash("u2@x.io")),
        Change("3", "clear", None, {"FN": None}, "h"),
    ]
    outcomes = client(meta).write(changes)
    assert [o.status for o in outcomes] == ["delivered", "delivered", "skipped"]
    assert [m for m, _ in meta.received[-2:]] == ["DELETE", "POST"]
    assert list(meta.members) == [email_hash("u1@x.io")] and meta.members[email_hash("u1@x.io")][
        "FN"
    ] == text_hash("new")
