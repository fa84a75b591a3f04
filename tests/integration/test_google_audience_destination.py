"""Google audiences (Customer Match through the Data Manager API) end to end over loopback: the CLI
and the state machine against the Data Manager fake, identifiers normalised and hashed in the
warehouse as Google documents, per-member field violations rejected by index and the rest sent
again, moves and mirror removals by the identifiers a member was added with, each whole-request
error classified, and what validate says."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from syncback.batches import LocalBatchStore
from syncback.cli import main
from syncback.destinations.base import Change
from syncback.destinations.google_audience import GoogleAudienceDestinationConfig, check_token
from syncback.destinations.google_audience.client import (
    GoogleAudienceDestination,
    member_key,
    parse_member_key,
)
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
from tests.conftest import run_json, write_project
from tests.fakes.google_audience import ACCOUNT, TOKEN, USER_LIST, GoogleAudienceFake
from tests.integration.sfn_harness import build_stack, mocked_aws

#: the model of a "high LTV" audience: customers whose lifetime value is over 1,000
CUSTOMERS = (
    "create or replace table analytics.customers (customer_id integer, email varchar, phone varchar, "
    "first_name varchar, last_name varchar, country varchar, zip varchar, ltv double, "
    "marketing_ok boolean)"
)
HIGH_LTV = "select * from analytics.customers where ltv > 1000"
MAPPING: dict[str, Any] = {
    "email": "email",
    "phone": "phone",
    "given_name": "first_name",
    "family_name": "last_name",
    "region_code": "country",
    "postal_code": "zip",
    "ad_personalization": {"column": "marketing_ok", "transform": "boolean"},
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def customers(n: int, start: int = 1, ltv: float = 5000.0) -> list[tuple[Any, ...]]:
    return [
        (
            i,
            f"  Customer.{i}@Example.com ",
            f"+1 (800) 555-{i:04d}",
            f" Ann{i} ",
            f"Lee{i}",
            "us",
            "94043",
            ltv,
            None,
        )
        for i in range(start, start + n)
    ]


def write_customers(path: Path, rows: list[tuple[Any, ...]]) -> None:
    con = duckdb.connect(str(path))
    con.execute("create schema if not exists analytics")
    con.execute(CUSTOMERS)
    if rows:
        con.executemany("insert into analytics.customers values (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.close()


@pytest.fixture
def google(monkeypatch: pytest.MonkeyPatch) -> Iterator[GoogleAudienceFake]:
    monkeypatch.setenv("GOOGLE_TOKEN", TOKEN)
    with GoogleAudienceFake() as fake:
        yield fake


def destination(fake: GoogleAudienceFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "google_audience",
        "operating_account_id": "123-456-7890",
        "user_list_id": USER_LIST,
        "access_token": "env:GOOGLE_TOKEN",
        "consent": {"ad_user_data": "granted", "ad_personalization": "denied"},
        "customer_match_terms_accepted": True,
        "dedicated_audience": True,
        "base_url": fake.url,
        "timeout_s": 2,
        **extra,
    }


def project(root: Path, fake: GoogleAudienceFake, rows: list[tuple[Any, ...]], **sync: Any) -> Path:
    spec = {
        "name": "high_ltv",
        "warehouse": "local",
        "model": HIGH_LTV,
        "primary_key": "customer_id",
        "mode": "mirror",
        "guards": {"max_delete_pct": 50},
        "destination": destination(fake),
        "mapping": MAPPING,
        **sync,
    }
    write_project(root, spec, file="high_ltv")
    write_customers(root / "wh.duckdb", rows)
    return root


def client(fake: GoogleAudienceFake, **extra: Any) -> GoogleAudienceDestination:
    config = GoogleAudienceDestinationConfig.model_validate(destination(fake, **extra))
    return GoogleAudienceDestination(config, TOKEN)


def upserts(*keys: int, **record: Any) -> list[Change]:
    return [Change(str(k), "upsert", "h", {"email": sha(f"c{k}@example.com"), **record}) for k in keys]


def sent(fake: GoogleAudienceFake, operation: str = "ingest") -> list[dict[str, Any]]:
    return [body for op, body in fake.received if op == operation]


def member(email: str, phone: str, given: str, family: str, region: str, postal: str) -> list[dict[str, Any]]:
    address = {"givenName": sha(given), "familyName": sha(family), "regionCode": region, "postalCode": postal}
    return [{"emailAddress": sha(email)}, {"phoneNumber": sha(phone)}, {"address": address}]


def violation(index: int, reason: str = "INVALID_FORMAT") -> dict[str, Any]:
    return {
        "error": {
            "code": 400,
            "message": "There was a problem with the request.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [
                        {
                            "field": f"audience_members.audience_members[{index}].user_data.user_identifiers",
                            "description": "Format is invalid.",
                            "reason": reason,
                        }
                    ],
                }
            ],
        }
    }


def status(code: int, name: str, message: str = "", reason: str | None = None) -> dict[str, Any]:
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}] if reason else []
    return {"error": {"code": code, "message": message, "status": name, "details": details}}


# ---- end to end ------------------------------------------------------------------------------------


def test_the_cli_adds_a_high_ltv_audience_hashed_as_google_says_and_mirror_removes_who_leaves(
    tmp_path: Path, google: GoogleAudienceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        *customers(3),
        (
            4,
            "Jane.Doe+ads@GoogleMail.com",
            "0044 20 7946 0000",
            "Jane",
            "Doe",
            "GB",
            "SW1A 1AA",
            2000.0,
            True,
        ),
    ]
    rows.append((5, "low@example.com", "+1 800 555 0199", "Lo", "W", "US", "10001", 10.0, True))
    root = project(tmp_path, google, rows)
    # When the sync runs: Then the four high-LTV customers are members, in one ingest request
    code, summary = run_json(root, capsys, sync="high_ltv")
    assert code == 0 and (summary["delivered"], summary["rejected"]) == (4, 0), summary
    (request,) = sent(google)
    assert request["destinations"] == [
        {
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": ACCOUNT},
            "productDestinationId": USER_LIST,
        }
    ]
    assert request["encoding"] == "HEX" and request["termsOfService"] == {
        "customerMatchTermsOfServiceStatus": "ACCEPTED"
    }
    # each identifier normalised as Google documents, then SHA-256 hex: white space gone, lower case,
    # a googlemail.com address without the dots before its @, a phone as "+" and digits; region and
    # postal code sent as they are (region upper-cased)
    by_email = {m["userData"]["userIdentifiers"][0]["emailAddress"]: m for m in request["audienceMembers"]}
    first = by_email[sha("customer.1@example.com")]
    assert first["userData"]["userIdentifiers"] == member(
        "customer.1@example.com", "+18005550001", "ann1", "lee1", "US", "94043"
    )
    jane = by_email[sha("janedoe+ads@googlemail.com")]
    assert jane["userData"]["userIdentifiers"][1] == {"phoneNumber": sha("+442079460000")}
    # consent: the spec's, and the row's boolean where it has one
    assert first["consent"] == {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_DENIED"}
    assert jane["consent"] == {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"}
    assert len(google.members()) == 4
    # When customer 2 changes address and customer 3 drops below the threshold
    rows[1] = (2, "new.two@example.com", *rows[1][2:])
    rows[2] = (*rows[2][:7], 50.0, None)
    write_customers(root / "wh.duckdb", rows)
    google.received.clear()
    code, summary = run_json(root, capsys, sync="high_ltv")
    # Then 3 is removed, and 2 gives its old identifiers up in phase 1 (a release: removed) and is
    # added under the new ones in phase 2, after every removal
    assert code == 0 and summary["planned"]["removed"] == 1 and summary["planned"]["changed"] == 1, summary
    assert [op for op, _ in google.received] == ["remove", "remove", "ingest"]
    assert [len(body["audienceMembers"]) for _, body in google.received] == [1, 1, 1]
    emails = {m["identifiers"][0]["emailAddress"] for m in google.members().values()}
    assert emails == {
        sha("customer.1@example.com"),
        sha("new.two@example.com"),
        sha("janedoe+ads@googlemail.com"),
    }
    # and a further run has nothing to do
    code, summary = run_json(root, capsys, sync="high_ltv")
    assert code == 0 and summary["planned"]["unchanged"] == 3


def test_nothing_plain_is_stored_or_logged_and_the_request_id_is_in_the_receipt_and_log(
    tmp_path: Path,
    google: GoogleAudienceFake,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="syncback")
    monkeypatch.setattr(logging.getLogger("syncback"), "propagate", True)
    monkeypatch.setattr(LocalBatchStore, "remove_batches", lambda self, sync, run_id: None)
    rows = customers(6)
    google.reject({"customer.4@example.com"})
    root = project(tmp_path, google, rows, mode="upsert")
    main(["--project", str(root), "run", "high_ltv", "--json"])
    main(["--project", str(root), "dlq", "list", "high_ltv"])
    stored = "\n".join(
        p.read_bytes().decode(errors="replace") for p in (root / ".syncback").rglob("*") if p.is_file()
    )
    printed = capsys.readouterr()
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    everything = "\n".join([stored, printed.out, printed.err, logged]).lower()
    # Then the refused member is a dead letter with Google's reason, and no e-mail, phone or name
    # appears anywhere outside the warehouse
    assert "invalid_audience_member" in everything
    for i in range(1, 7):
        for plain in (f"customer.{i}@example.com", f"555-{i:04d}", f"8005550{i:03d}", f"ann{i}", f"lee{i}"):
            assert plain not in everything, plain
    # and each request Google took has its id in the log and in the delivered outcomes' receipts
    ids = [r.__dict__["google_request_id"] for r in caplog.records if "google_request_id" in r.__dict__]
    assert len(ids) == 1 and ids[0] and f"Data Manager request {ids[0]}" in stored


def test_a_google_audience_sync_runs_through_the_state_machine(
    tmp_path: Path, google: GoogleAudienceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in mocked_aws(monkeypatch):
        root = project(
            tmp_path, google, customers(300), batch_size=100, destination=destination(google, batch_size=60)
        )
        stack = build_stack(load_project(root), None, monkeypatch)  # the real client
        execution = stack.run("high_ltv")
        assert execution["status"] == "SUCCEEDED", execution
        run = json.loads(execution["output"])["run"]
        assert (run["status"], run["delivered"]) == ("succeeded", 300)
        # batches of 100 go out as 60 + 40 members each
        assert sorted(len(b["audienceMembers"]) for b in sent(google)) == [40, 40, 40, 60, 60, 60]
        assert len(google.members()) == 300 and len(_snapshot(stack.rt.project)) == 300


def test_an_expired_token_fails_the_state_machine_run_with_the_fix(
    tmp_path: Path, google: GoogleAudienceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_TOKEN", "ya29.expired")
    for _ in mocked_aws(monkeypatch):
        root = project(tmp_path, google, customers(20))
        stack = build_stack(load_project(root), None, monkeypatch)
        execution = stack.run("high_ltv")
        assert execution["status"] == "FAILED"
        (record,) = stack.rt.state.runs("high_ltv")
        assert record.status == "failed" and "UNAUTHENTICATED" in (record.error or "")
        assert "auth/datamanager" in (record.error or "") and "ya29.expired" not in (record.error or "")
        assert record.undelivered == 20 and stack.drain(stack.dead_letter_queue) == []
        assert google.members() == {}


def _snapshot(project: Any) -> list[Any]:
    con = duckdb.connect(str(project.root / "wh.duckdb"))
    rows = con.execute("select key from syncback.snapshot__high_ltv where not removed").fetchall()
    con.close()
    return rows


# ---- per-member refusals ---------------------------------------------------------------------------


def test_invalid_members_are_rejected_by_index_and_the_rest_sent_again(
    tmp_path: Path, google: GoogleAudienceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, google, customers(40), mode="upsert")
    google.reject({"customer.7@example.com", "customer.31@example.com"})
    code, summary = run_json(root, capsys, sync="high_ltv")
    # Then the request naming them was refused whole (400), the 38 others went in a second request
    assert code == 1 and (summary["delivered"], summary["rejected"]) == (38, 2), summary
    assert google.counts["400"] == 1 and google.counts["ingest"] == 1 and len(google.members()) == 38
    assert main(["--project", str(root), "dlq", "list", "high_ltv"]) == 0
    listing = capsys.readouterr().out
    assert "2 dead letter(s)" in listing and "INVALID_AUDIENCE_MEMBER" in listing
    # When Google takes them: Then the next run sends just those two
    google.reject(set())
    code, summary = run_json(root, capsys, sync="high_ltv")
    assert code == 0 and summary["delivered"] == 2 and summary["planned"]["unchanged"] == 38


def test_a_refusal_naming_members_rejects_those_and_delivers_the_rest(google: GoogleAudienceFake) -> None:
    google.fail_next(400, violation(1, "INVALID_HEX_ENCODING"))
    outcomes = client(google).write(upserts(1, 2, 3))
    assert [o.status for o in outcomes] == ["delivered", "rejected", "delivered"]
    assert outcomes[1].reason == "Data Manager INVALID_HEX_ENCODING: Format is invalid."
    # the second request carried the two Google did not name
    assert [len(b["audienceMembers"]) for b in sent(google)] == [2] and len(google.members()) == 2


def test_members_named_again_and_again_stop_after_four_requests(google: GoogleAudienceFake) -> None:
    google.fail_next(400, violation(0), n=4)
    with pytest.raises(RequestRejected, match="after 4 requests"):
        client(google).write(upserts(1, 2, 3, 4, 5))
    assert google.members() == {}


def test_a_refusal_that_names_no_member_is_the_whole_requests(google: GoogleAudienceFake) -> None:
    unnamed = status(400, "INVALID_ARGUMENT", "There was a problem with the request.", "INVALID_ARGUMENT")
    google.fail_next(400, unnamed)
    with pytest.raises(RequestRejected, match="INVALID_ARGUMENT"):
        client(google).write(upserts(1, 2))
    # alone, the record is the one refused
    google.fail_next(400, unnamed)
    (alone,) = client(google).write(upserts(3))
    assert alone.status == "rejected" and "INVALID_ARGUMENT" in str(alone.reason)


def test_more_members_than_google_takes_is_refused_and_the_delivery_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GOOGLE_TOKEN", TOKEN)
    # Given an API that takes 50 members a request, and a spec at 120
    with GoogleAudienceFake(max_members=50) as fake:
        with pytest.raises(RequestRejected, match="TOO_MANY_AUDIENCE_MEMBERS"):
            client(fake).write(upserts(*range(1, 61)))
        root = project(
            tmp_path, fake, customers(120), mode="upsert", destination=destination(fake, batch_size=120)
        )
        code, summary = run_json(root, capsys, sync="high_ltv")
    assert code == 0 and summary["delivered"] == 120 and len(fake.members()) == 120, summary


def test_more_than_ten_thousand_is_refused_before_sending(google: GoogleAudienceFake) -> None:
    with pytest.raises(ValueError, match="at most 10000"):
        client(google).write(upserts(*range(10_001)))
    assert google.counts["requests"] == 0


# ---- what the client sends ---------------------------------------------------------------------------


def test_a_value_that_is_not_a_hash_is_never_sent(google: GoogleAudienceFake) -> None:
    changes = [
        Change("1", "upsert", "h", {"email": "plain@example.com"}),
        Change("2", "upsert", "h", {"email": None, "phone": None}),
        *upserts(3),
    ]
    outcomes = client(google).write(changes)
    assert [o.status for o in outcomes] == ["rejected", "rejected", "delivered"]
    assert "email is not a SHA-256 hex digest" in str(outcomes[0].reason) and "plain" not in str(
        outcomes[0].reason
    )
    assert "no identifier" in str(outcomes[1].reason)
    assert [len(b["audienceMembers"]) for b in sent(google)] == [1]


def test_consent_that_is_not_a_boolean_is_never_guessed(google: GoogleAudienceFake) -> None:
    changes = [
        *upserts(1, ad_user_data="yes"),
        *upserts(2, ad_user_data=False),
        *upserts(3, ad_user_data=None),
    ]
    outcomes = client(google).write(changes)
    assert [o.status for o in outcomes] == ["rejected", "delivered", "delivered"]
    assert "ad_user_data is not true, false or null" in str(outcomes[0].reason)
    consents = [m["consent"]["adUserData"] for m in sent(google)[0]["audienceMembers"]]
    assert consents == ["CONSENT_DENIED", "CONSENT_GRANTED"]  # the row's false; the spec's granted for null


def test_an_address_is_sent_only_whole(google: GoogleAudienceFake) -> None:
    partial = {"given_name": sha("ann"), "family_name": None, "region_code": "US", "postal_code": "94043"}
    (outcome,) = client(google).write(upserts(1, **partial))
    assert outcome.status == "delivered"
    assert sent(google)[0]["audienceMembers"][0]["userData"]["userIdentifiers"] == [
        {"emailAddress": sha("c1@example.com")}
    ]


def test_a_new_email_is_released_first_and_then_added_without_a_second_removal(
    google: GoogleAudienceFake,
) -> None:
    a = [{"emailAddress": sha("a@x.io")}]
    client(google).write([Change("1", "upsert", "h", {"email": sha("a@x.io")}, identity=sha("a@x.io"))])
    # When the plan releases the old e-mail in phase 1, and writes the new one in phase 2
    (released,) = client(google).write([Change("1", "release", None, {}, member_key(a))])
    moved = Change("1", "upsert", "h", {"email": sha("b@x.io")}, member_key(a), identity=sha("b@x.io"))
    (added,) = client(google).write([moved])
    # Then the release removed a, and the write only added b
    assert [op for op, _ in google.received] == ["ingest", "remove", "ingest"]
    assert (released.status, added.status, added.destination_id) == (
        "delivered",
        "delivered",
        "e=" + sha("b@x.io"),
    )
    assert set(google.members()) == {"e=" + sha("b@x.io")}


def test_the_same_person_with_a_new_phone_is_removed_and_added_in_one_write(
    google: GoogleAudienceFake,
) -> None:
    first = {"email": sha("a@x.io"), "phone": sha("+1")}
    (added,) = client(google).write([Change("1", "upsert", "h", first, identity=sha("a@x.io"))])
    again = Change(
        "1", "upsert", "h", {**first, "phone": sha("+2")}, added.destination_id, identity=sha("a@x.io")
    )
    client(google).write([again])
    assert [op for op, _ in google.received] == ["ingest", "remove", "ingest"]
    assert set(google.members()) == {f"e={sha('a@x.io')}|p={sha('+2')}"}


def test_members_without_an_identity_trading_identifiers_in_one_write_both_end_in_the_list(
    google: GoogleAudienceFake,
) -> None:
    a, b = [{"emailAddress": sha("a@x.io")}], [{"emailAddress": sha("b@x.io")}]
    client(google).write(
        [
            Change("1", "upsert", "h", {"email": sha("a@x.io")}),
            Change("2", "upsert", "h", {"email": sha("b@x.io")}),
        ]
    )
    # When 1 takes b and 2 takes a
    swap = [
        Change("1", "upsert", "h", {"email": sha("b@x.io")}, member_key(a)),
        Change("2", "upsert", "h", {"email": sha("a@x.io")}, member_key(b)),
    ]
    outcomes = client(google).write(swap)
    # Then both old members are removed first, in one request, and both are added again
    assert [op for op, _ in google.received] == ["ingest", "remove", "ingest"]
    assert [o.destination_id for o in outcomes] == [member_key(b), member_key(a)]
    assert set(google.members()) == {"e=" + sha("a@x.io"), "e=" + sha("b@x.io")}


def test_removal_sends_the_identifiers_the_member_was_added_with(google: GoogleAudienceFake) -> None:
    (added,) = client(google).write(upserts(1, phone=sha("+18005550100")))
    changes = [Change("1", "archive", destination_id=added.destination_id), Change("2", "archive")]
    outcomes = client(google).write(changes)
    assert [o.status for o in outcomes] == ["delivered", "skipped"] and google.members() == {}
    (removal,) = sent(google, "remove")
    assert added.destination_id == f"e={sha('c1@example.com')}|p={sha('+18005550100')}"
    assert removal["audienceMembers"] == [
        {
            "userData": {
                "userIdentifiers": [
                    {"emailAddress": sha("c1@example.com")},
                    {"phoneNumber": sha("+18005550100")},
                ]
            }
        }
    ]
    assert "termsOfService" not in removal and google.counts["removed"] == 1


def test_a_destination_id_round_trips_whatever_the_postal_code_holds() -> None:
    address = {
        "givenName": sha("ann"),
        "familyName": sha("lee"),
        "regionCode": "GB",
        "postalCode": "SW1A 1AA|,=%",
    }
    identifiers = [{"emailAddress": sha("a@x.io")}, {"phoneNumber": sha("+1")}, {"address": address}]
    assert parse_member_key(member_key(identifiers)) == identifiers
    assert parse_member_key("not an id") is None and parse_member_key(None) is None


def test_a_removal_google_refuses_is_rejected_and_the_rest_removed(google: GoogleAudienceFake) -> None:
    added = client(google).write(upserts(1, 2, 3))
    google.fail_next(400, violation(1, "INVALID_SHA256_FORMAT"))
    outcomes = client(google).write(
        [Change(o.key, "archive", destination_id=o.destination_id) for o in added]
    )
    assert [o.status for o in outcomes] == ["delivered", "rejected", "delivered"]
    assert outcomes[1].reason == "Data Manager INVALID_SHA256_FORMAT: Format is invalid."
    assert {m["identifiers"][0]["emailAddress"] for m in google.members().values()} == {sha("c2@example.com")}


def test_a_move_whose_removal_is_refused_is_rejected_and_not_added(google: GoogleAudienceFake) -> None:
    (one, two) = client(google).write(upserts(1, 2))
    moves = [
        Change("1", "upsert", "h", {"email": sha("new1@example.com")}, one.destination_id),
        Change("2", "upsert", "h", {"email": sha("new2@example.com")}, two.destination_id),
    ]
    google.fail_next(400, violation(0))
    outcomes = client(google).write(moves)
    # Then 1 keeps its old member (its removal was refused, so it is not added under the new e-mail)
    assert [o.status for o in outcomes] == ["rejected", "delivered"]
    emails = {m["identifiers"][0]["emailAddress"] for m in google.members().values()}
    assert emails == {sha("c1@example.com"), sha("new2@example.com")}


def test_one_write_mixing_removals_and_adds_removes_first(google: GoogleAudienceFake) -> None:
    (gone,) = client(google).write(upserts(1))
    mixed = [
        *upserts(2),
        Change("1", "archive", destination_id=gone.destination_id),
        Change("3", "clear", None, {}, "x"),
    ]
    outcomes = client(google).write(mixed)
    assert [o.status for o in outcomes] == ["delivered", "delivered", "skipped"]
    assert [op for op, _ in google.received] == ["ingest", "remove", "ingest"]
    assert {m["identifiers"][0]["emailAddress"] for m in google.members().values()} == {sha("c2@example.com")}


def test_clears_and_releases_of_nothing_recorded_are_skipped_without_a_request(
    google: GoogleAudienceFake,
) -> None:
    outcomes = client(google).write(
        [Change("1", "clear", None, {}, "x"), Change("2", "release", None, {}, "y")]
    )
    assert [o.status for o in outcomes] == ["skipped", "skipped"] and google.counts["requests"] == 0


def test_validate_only_applies_nothing_and_leaves_the_members_to_send(
    tmp_path: Path, google: GoogleAudienceFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, google, customers(5), destination=destination(google, validate_only=True))
    code, summary = run_json(root, capsys, sync="high_ltv")
    assert code == 0 and (summary["delivered"], summary["skipped"]) == (0, 5), summary
    assert sent(google)[0]["validateOnly"] is True and google.members() == {}
    assert run_json(root, capsys, sync="high_ltv")[1]["planned"]["added"] == 5


def test_a_manager_account_is_sent_as_the_login_account(google: GoogleAudienceFake) -> None:
    client(google, login_account_id="9876543210").write(upserts(1))
    assert sent(google)[0]["destinations"][0]["loginAccount"] == {
        "accountType": "GOOGLE_ADS",
        "accountId": "9876543210",
    }


# ---- whole-request errors, classified ----------------------------------------------------------------


def test_resource_exhausted_is_rate_limited_and_waits_what_google_says(google: GoogleAudienceFake) -> None:
    google.fail_next(429, status(429, "RESOURCE_EXHAUSTED", "Quota exceeded."), headers={"Retry-After": "7"})
    with pytest.raises(RateLimited) as caught:
        client(google).write(upserts(1))
    assert caught.value.retry_after == 7
    google.fail_next(429, status(429, "RESOURCE_EXHAUSTED", "Quota exceeded."))
    with pytest.raises(RateLimited) as without:
        client(google).write(upserts(1))
    assert without.value.retry_after is None and google.members() == {}


def test_a_project_limit_below_the_budget_is_waited_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GOOGLE_TOKEN", TOKEN)
    with GoogleAudienceFake(requests_per_window=2, window_s=1.0) as fake:
        spec = destination(
            fake, batch_size=10, concurrency=2, rate_limit={"requests": 1000, "per_seconds": 1}
        )
        root = project(tmp_path, fake, customers(60), mode="upsert", destination=spec)
        code, summary = run_json(root, capsys, sync="high_ltv")
    assert code == 0 and summary["delivered"] == 60 and fake.counts["429"] > 0, (summary, fake.counts)


@pytest.mark.parametrize(
    ("code", "name"), [(500, "INTERNAL"), (503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED")]
)
def test_5xx_is_destination_unavailable(google: GoogleAudienceFake, code: int, name: str) -> None:
    google.fail_next(code, status(code, name, "try again"))
    with pytest.raises(DestinationUnavailable, match=name):
        client(google).write(upserts(1))
    assert google.members() == {}


def test_an_answer_later_than_the_timeout_is_unavailable(google: GoogleAudienceFake) -> None:
    google.inject(0, 0, 1.0, seed=1)
    google.late_s = 1.0
    with pytest.raises(DestinationUnavailable, match="no answer"):
        client(google, timeout_s=0.2).write(upserts(1))


def test_an_expired_token_stops_the_run_with_the_fix_and_without_the_token(
    tmp_path: Path,
    google: GoogleAudienceFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GOOGLE_TOKEN", "ya29.expired-token")
    root = project(tmp_path, google, customers(5))
    code, summary = run_json(root, capsys, sync="high_ltv")
    assert code == 3 and summary["status"] == "failed", summary
    assert "UNAUTHENTICATED" in summary["error"] and "destination.access_token" in summary["error"]
    assert "print-access-token" in summary["error"] and "ya29.expired-token" not in json.dumps(summary)


def test_an_account_the_token_cannot_reach_is_permission_denied_naming_the_account(
    google: GoogleAudienceFake,
) -> None:
    with pytest.raises(DestinationAuthError, match="PERMISSION_DENIED.*operating_account_id"):
        client(google, operating_account_id="1112223333").write(upserts(1))


@pytest.mark.parametrize(
    ("extra", "answer", "field"),
    [
        ({"user_list_id": "999"}, None, "destination.user_list_id"),
        (
            {},
            status(
                400,
                "INVALID_ARGUMENT",
                "Required terms and conditions are not accepted.",
                "TERMS_AND_CONDITIONS_NOT_SIGNED",
            ),
            "destination.customer_match_terms_accepted",
        ),
        ({"base_url": "{url}/nope"}, None, "destination.base_url"),
        (
            {},
            {"violations": "destinations.destinations[0].login_account.account_id"},
            "destination.login_account_id",
        ),
        (
            {},
            {"violations": "destinations.destinations[0].operating_account"},
            "destination.operating_account_id",
        ),
    ],
)
def test_a_wrong_destination_is_systemic_naming_the_field(
    google: GoogleAudienceFake, extra: dict[str, str], answer: dict[str, Any] | None, field: str
) -> None:
    if answer is not None and "violations" in answer:
        refused = violation(0, "INVALID_DESTINATION")
        refused["error"]["details"][0]["fieldViolations"][0]["field"] = answer["violations"]
        google.fail_next(400, refused)
    elif answer is not None:
        google.fail_next(answer["error"]["code"], answer)
    extra = {k: v.format(url=google.url) for k, v in extra.items()}
    with pytest.raises(SystemicError) as caught:
        client(google, **extra).write(upserts(1, 2))
    assert caught.value.field == field and google.members() == {}


def test_error_messages_carry_no_hash_and_no_token(google: GoogleAudienceFake) -> None:
    hashed = sha("c1@example.com")
    google.fail_next(400, status(400, "INVALID_ARGUMENT", f"bad {hashed} with {TOKEN}"))
    with pytest.raises(RequestRejected) as caught:
        client(google).write(upserts(1, 2))
    assert hashed not in str(caught.value) and TOKEN not in str(caught.value)


# ---- validate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"mapping": {**MAPPING, "ltv": "ltv"}}, "mapping.ltv: an audience member has no field 'ltv'"),
        (
            {"mapping": {k: v for k, v in MAPPING.items() if k != "postal_code"}},
            "mapping: an address needs given_name, family_name, region_code and postal_code together; map postal_code",
        ),
        ({"mapping": {"ad_user_data": "marketing_ok"}}, "mapping: the mapping names no member"),
        (
            {"mapping": {**MAPPING, "email": {"column": "email", "transform": "sha256"}}},
            "mapping.email: a google_audience destination normalises and hashes email itself",
        ),
        ({"mapping": {**MAPPING, "email": "customer_id"}}, "primary_key: customer_id is mapped to email"),
        (
            {"destination_extra": {"customer_match_terms_accepted": False}},
            "destination.customer_match_terms_accepted: Google takes",
        ),
        (
            {"destination_extra": {"dedicated_audience": False}},
            "destination.dedicated_audience: mirror removes every member",
        ),
        ({"mode": "insert"}, "a google_audience destination takes upsert or mirror, not insert"),
        (
            {"destination_extra": {"batch_size": 10_001}},
            "destination.batch_size: Input should be less than or equal to 10000",
        ),
        (
            {"destination_extra": {"operating_account_id": "acme"}},
            "destination.operating_account_id: 'acme' is not an account id: give the digits of the Google Ads customer id",
        ),
        (
            {"destination_extra": {"access_token": "ya29.abc"}},
            "destination.access_token: secrets are never written",
        ),
        (
            {"destination_extra": {"consent": {"ad_user_data": "granted"}}},
            "destination.consent.ad_personalization: required; add it",
        ),
    ],
)
def test_validate_names_the_file_the_field_and_the_fix(
    tmp_path: Path, google: GoogleAudienceFake, change: dict[str, Any], says: str
) -> None:
    extra = change.pop("destination_extra", {})
    project(tmp_path, google, customers(1), destination=destination(google, **extra), **change)
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert says in str(caught.value) and "syncs/high_ltv.yaml" in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("Bearer ya29.abc", "starts with 'Bearer '"),
        ("ya29 abc", "holds white space"),
        ('{"type":"service_account"}', "JSON document (a service-account key?)"),
    ],
)
def test_validate_checks_the_token_it_reads_naming_the_field(
    tmp_path: Path,
    google: GoogleAudienceFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str,
    says: str,
) -> None:
    monkeypatch.setenv("GOOGLE_TOKEN", token)
    root = project(tmp_path, google, customers(1))
    assert main(["--project", str(root), "validate"]) == 2
    out = capsys.readouterr()
    assert (
        f"syncs/high_ltv.yaml: destination.access_token: the Google access token {says}" in out.out + out.err
        or (f"syncs/high_ltv.yaml: destination.access_token: this is a {says}" in out.out + out.err)
    ), out
    assert "ya29" not in out.out + out.err


def test_an_empty_token_is_refused_saying_which_scope_to_mint() -> None:
    with pytest.raises(SecretError, match="auth/datamanager"):
        check_token("access_token", "  ")
    check_token("access_token", "ya29.a0AfB_byC")
