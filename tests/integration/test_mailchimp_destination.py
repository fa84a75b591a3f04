"""Mailchimp audience members end to end over loopback: the CLI and the state machine against the
Mailchimp fake; consent (a member's status is never sent), the 500-member limit, per-member errors
in a 200, whole-request problems, the connection limit, credentials, and what validate says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import requests

from syncback.cli import main
from syncback.destinations.base import Change
from syncback.destinations.mailchimp import MailchimpDestinationConfig, data_centre_url
from syncback.destinations.mailchimp.client import MailchimpDestination, subscriber_hash
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
from syncback.state import RunRecord
from tests.conftest import contacts_rows, run_json, write_contacts, write_project
from tests.convergence import Row, World, check_converged, held_emails
from tests.fakes.mailchimp import KEY, LIST, MailchimpFake
from tests.integration.sfn_harness import build_stack, mocked_aws, snapshot

MAPPING: dict[str, Any] = {
    "email_address": "email",
    "merge_fields.FNAME": "first_name",
    "merge_fields.SCORE": "lead_score",
    "tags.repeat-buyer": "repeat_buyer",
}
#: the contacts, and whether each is a repeat buyer (a score of 50 or more, here)
MODEL = "select *, lead_score >= 50 as repeat_buyer from analytics.contacts"


@pytest.fixture
def mailchimp(monkeypatch: pytest.MonkeyPatch) -> Iterator[MailchimpFake]:
    monkeypatch.setenv("MAILCHIMP_KEY", KEY)
    with MailchimpFake() as fake:
        yield fake


def destination(fake: MailchimpFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "mailchimp",
        "list_id": LIST,
        "api_key": "env:MAILCHIMP_KEY",
        "status_for_new": "pending",
        "base_url": fake.url,
        **extra,
    }


def project(root: Path, fake: MailchimpFake, rows: int = 250, **sync: Any) -> Path:
    spec = {
        "name": "contacts",
        "warehouse": "local",
        "model": MODEL,
        "primary_key": "customer_id",
        "mode": "mirror",
        "guards": {"max_delete_pct": 20},
        "batch_size": 1_000,
        "destination": destination(fake),
        "mapping": MAPPING,
        **sync,
    }
    return write_project(root, spec, contacts_rows(rows))


def live(fake: MailchimpFake) -> dict[str, dict[str, Any]]:
    return {m["email_address"]: m for m in fake.members.values() if not m["archived"]}


def sent_statuses(fake: MailchimpFake) -> list[tuple[str, str, str]]:
    """Return (method, path, status) of every status a request sent (batch members' included)."""
    out = []
    for method, path, body in fake.requests_seen:
        items = body.get("members", [body]) if isinstance(body, dict) else []
        out += [(method, path, str(item["status"])) for item in items if "status" in item]
    return out


# ---- the CLI, end to end -----------------------------------------------------------------------


def test_the_cli_adds_updates_moves_and_archives_members(
    tmp_path: Path, mailchimp: MailchimpFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, mailchimp, rows=1_200)
    # When the sync runs: Then 1,200 members are added in batches of at most 500, pending, with their
    # merge fields and tags
    code, summary = run_json(root, capsys)
    assert code == 0 and (summary["delivered"], summary["rejected"]) == (1_200, 0), summary
    batches = [len(body["members"]) for m, p, body in mailchimp.requests_seen if p == f"/3.0/lists/{LIST}"]
    assert sorted(batches) == [200, 500, 500] and mailchimp.counts["created"] == 1_200
    member = live(mailchimp)["user7@example.com"]
    assert member["status"] == "pending" and member["merge_fields"] == {"FNAME": "First7", "SCORE": "7"}
    assert member["tags"] == set() and live(mailchimp)["user60@example.com"]["tags"] == {"repeat-buyer"}
    # When ten rows leave, one changes its name and one its address: Then those ten members are
    # archived, the renamed one updated, the moved one moved (same member, its status kept)
    mailchimp.members[subscriber_hash("user2@example.com")]["status"] = "unsubscribed"
    rows = contacts_rows(1_190)
    rows[0] = (1, "user1@example.com", "Renamed", 99, None)
    rows[1] = (2, "moved-2@example.com", "First2", 2, None)
    rows[59] = (60, "user60@example.com", "First60", 0, None)
    write_contacts(root / "wh.duckdb", rows)
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["removed"] == 10 and summary["planned"]["changed"] == 3, summary
    members = live(mailchimp)
    assert len(members) == 1_190 and mailchimp.counts["created"] == 1_200
    assert members["user1@example.com"]["merge_fields"]["FNAME"] == "Renamed"
    # an existing member's tags: added (user 1, now a repeat buyer) and removed (user 60, no longer)
    assert (
        members["user1@example.com"]["tags"] == {"repeat-buyer"}
        and members["user60@example.com"]["tags"] == set()
    )
    assert "user2@example.com" not in members and members["moved-2@example.com"]["status"] == "unsubscribed"
    assert sum(m["archived"] for m in mailchimp.members.values()) == 10  # archived, kept
    # and a further run has nothing to do
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["unchanged"] == 1_190


def test_a_mailchimp_sync_runs_through_the_state_machine(
    tmp_path: Path, mailchimp: MailchimpFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in mocked_aws(monkeypatch):
        root = project(tmp_path, mailchimp, rows=700, batch_size=300)
        stack = build_stack(load_project(root), None, monkeypatch)  # the real Mailchimp client
        execution = stack.run()
        assert execution["status"] == "SUCCEEDED", execution
        run = json.loads(execution["output"])["run"]
        assert (run["status"], run["delivered"]) == ("succeeded", 700)
        assert len(live(mailchimp)) == 700 and len(snapshot(stack.rt.project)) == 700
        # the snapshot's destination id is the subscriber hash
        assert destination_ids(root) == set(mailchimp.members)


def destination_ids(root: Path) -> set[str]:
    con = duckdb.connect(str(root / "wh.duckdb"))
    try:
        return {
            i for (i,) in con.execute("select destination_id from syncback.snapshot__contacts").fetchall()
        }
    finally:
        con.close()


# ---- consent ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["subscribed", "pending", "transactional"])
def test_new_members_get_the_status_the_spec_names(
    tmp_path: Path, mailchimp: MailchimpFake, capsys: pytest.CaptureFixture[str], status: str
) -> None:
    root = project(tmp_path, mailchimp, rows=5, destination=destination(mailchimp, status_for_new=status))
    assert run_json(root, capsys)[0] == 0
    assert {m["status"] for m in live(mailchimp).values()} == {status}


def test_an_unsubscribed_or_cleaned_member_stays_so_across_syncs(
    tmp_path: Path, mailchimp: MailchimpFake, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given people who unsubscribed, bounced, or subscribed themselves, before the sync existed
    mailchimp.add_by_hand("user1@example.com", "unsubscribed")
    mailchimp.add_by_hand("user2@example.com", "cleaned")
    mailchimp.add_by_hand("user3@example.com", "subscribed")
    root = project(
        tmp_path, mailchimp, rows=6, destination=destination(mailchimp, status_for_new="subscribed")
    )
    # When the sync writes them, and again after their rows change
    for name in ("First", "Changed"):
        write_contacts(
            root / "wh.duckdb", [(i, f"user{i}@example.com", f"{name}{i}", i, None) for i in range(1, 7)]
        )
        code, summary = run_json(root, capsys)
        assert code == 0 and summary["delivered"] == 6, summary
        members = live(mailchimp)
        # Then their merge fields follow the model, their status does not change
        assert [members[f"user{i}@example.com"]["status"] for i in (1, 2, 3)] == [
            "unsubscribed",
            "cleaned",
            "subscribed",
        ]
        assert members["user1@example.com"]["merge_fields"]["FNAME"] == f"{name}1"
    # and no status was ever sent but to members the batch created: Mailchimp never had to refuse one
    assert {(m, s) for m, _, s in sent_statuses(mailchimp)} == {("POST", "subscribed")}
    assert all(
        body["update_existing"] is False for m, p, body in mailchimp.requests_seen if "members" in body
    )
    assert mailchimp.counts["compliance"] == 0 and members["user4@example.com"]["status"] == "subscribed"


def test_the_fake_refuses_to_resubscribe_a_member_in_a_compliance_state(mailchimp: MailchimpFake) -> None:
    # what the client avoids: update_existing with a status, for someone who unsubscribed
    mailchimp.add_by_hand("gone@example.com", "unsubscribed")
    answer = requests.post(
        f"{mailchimp.url}/3.0/lists/{LIST}",
        json={
            "members": [{"email_address": "gone@example.com", "status": "subscribed"}],
            "update_existing": True,
        },
        auth=("any", KEY),
        timeout=5,
    )
    assert answer.status_code == 200 and answer.json()["errors"][0]["error"].endswith("cannot be subscribed.")
    assert mailchimp.member("gone@example.com")["status"] == "unsubscribed"  # type: ignore[index]


def test_a_moved_address_keeps_its_status_and_one_another_member_holds_is_refused(
    tmp_path: Path, mailchimp: MailchimpFake, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, mailchimp, rows=3, mode="upsert")
    assert run_json(root, capsys)[0] == 0
    mailchimp.add_by_hand("taken@example.com", "subscribed")
    # When row 1 moves to an address a person's member holds: Then Mailchimp refuses it, with its
    # reason, and neither member changes
    write_contacts(
        root / "wh.duckdb",
        [
            (1, "taken@example.com", "One", 1, None),
            (2, "user2@example.com", "Two", 2, None),
            (3, "user3@example.com", "T", 3, None),
        ],
    )
    code, summary = run_json(root, capsys)
    assert code == 1 and summary["rejected"] == 1, summary
    reason = summary["rejected_sample"][0]["reason"]
    assert "Member Exists" in reason and "taken@example.com" not in reason
    assert (
        "user1@example.com" in live(mailchimp) and live(mailchimp)["taken@example.com"]["merge_fields"] == {}
    )


# ---- mirror: archive or unsubscribe ---------------------------------------------------------------


@pytest.mark.parametrize("removal", ["archive", "unsubscribe"])
def test_mirror_removes_only_the_members_it_added_as_the_spec_says(
    tmp_path: Path, mailchimp: MailchimpFake, capsys: pytest.CaptureFixture[str], removal: str
) -> None:
    mailchimp.add_by_hand("user5@example.com", "subscribed")  # a member the sync did not add
    root = project(
        tmp_path,
        mailchimp,
        rows=10,
        destination=destination(mailchimp, removal=removal),
        guards={"max_delete_pct": 100},
    )
    assert run_json(root, capsys)[0] == 0
    write_contacts(root / "wh.duckdb", contacts_rows(3))
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["removed"] == 7, summary
    gone = [mailchimp.member(f"user{i}@example.com") for i in (4, 6, 7, 8, 9, 10)]
    if removal == "archive":
        assert all(m and m["archived"] for m in gone)
    else:
        assert all(m and not m["archived"] and m["status"] == "unsubscribed" for m in gone)
    kept = mailchimp.member("user5@example.com")
    assert kept and not kept["archived"] and kept["status"] == "subscribed"


# ---- limits -------------------------------------------------------------------------------------


def client(fake: MailchimpFake, key: str = KEY, **extra: Any) -> MailchimpDestination:
    config = MailchimpDestinationConfig.model_validate(destination(fake, **extra))
    return MailchimpDestination(config, key, fake.url)


def upserts(n: int, start: int = 0) -> list[Change]:
    return [
        Change(str(i), "upsert", "h", {"email_address": f"m{i}@example.com", "merge_fields.FNAME": f"N{i}"})
        for i in range(start, start + n)
    ]


def test_at_most_500_members_a_request(mailchimp: MailchimpFake) -> None:
    with pytest.raises(ValueError, match="at most 500 members"):
        client(mailchimp).write(upserts(501), "s")
    # the fake, as Mailchimp: 501 members in one call is a 400 problem
    answer = requests.post(
        f"{mailchimp.url}/3.0/lists/{LIST}",
        json={"members": [{"email_address": f"m{i}@example.com", "status": "pending"} for i in range(501)]},
        auth=("any", KEY),
        timeout=5,
    )
    assert answer.status_code == 400 and answer.headers["Content-Type"].startswith("application/problem+json")
    assert [o.status for o in client(mailchimp).write(upserts(500), "s")] == ["delivered"] * 500


def test_the_connection_limit_is_kept_at_ten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAILCHIMP_KEY", KEY)
    with MailchimpFake(latency_s=0.05) as fake:
        root = project(
            tmp_path, fake, rows=3_000, batch_size=300, destination=destination(fake, concurrency=10)
        )
        code, summary = run_json(root, capsys)
        assert code == 0 and summary["delivered"] == 3_000
        assert fake.counts["most_connections"] <= 10 and fake.counts["429"] == 0
    # and a spec asking for more is refused, saying why
    project(tmp_path, fake, rows=1, destination=destination(fake, concurrency=11))
    with pytest.raises(ConfigError, match="less than or equal to 10"):
        load_project(tmp_path)


def test_an_eleventh_connection_is_answered_429() -> None:
    import concurrent.futures

    with MailchimpFake(max_connections=10, latency_s=1.5) as fake:  # long enough for all 12 to overlap
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(
                pool.map(
                    lambda i: requests.get(
                        f"{fake.url}/3.0/lists/{LIST}/members/x{i}", auth=("a", KEY), timeout=5
                    ),
                    range(12),
                )
            )
        assert sorted(a.status_code for a in answers).count(429) >= 1


# ---- errors: per member, and whole requests ---------------------------------------------------------


def test_per_member_errors_are_rejections_with_mailchimps_reason_and_no_value(
    tmp_path: Path, mailchimp: MailchimpFake, capsys: pytest.CaptureFixture[str]
) -> None:
    mailchimp.forgotten.add(subscriber_hash("user4@example.com"))  # permanently deleted there
    mailchimp.reject_values = {"first5"}
    root = project(tmp_path, mailchimp, rows=6)
    write_contacts(
        root / "wh.duckdb",
        [(i, f"user{i}@example.com", f"First{i}", i, None) for i in range(1, 7)]
        + [(7, "not-an-address", "Seven", 7, None)],
    )
    code, summary = run_json(root, capsys)
    assert code == 1 and (summary["delivered"], summary["rejected"]) == (4, 3), summary
    assert main(["--project", str(root), "dlq", "list", "contacts"]) == 0
    listing = capsys.readouterr().out
    assert "3 dead letter(s)" in listing and "permanently deleted" in listing
    assert "valid email address" in listing and "merge fields were invalid" in listing
    assert "user4@example.com" not in listing and "not-an-address" not in listing


def test_a_refused_update_of_an_existing_member_is_a_rejection(mailchimp: MailchimpFake) -> None:
    mailchimp.add_by_hand("m1@example.com", "subscribed")
    mailchimp.reject_values = {"n1"}
    outcomes = client(mailchimp).write(upserts(2), "s")
    assert [o.status for o in outcomes] == ["delivered", "rejected"]
    assert outcomes[1].reason == "Invalid Resource: Your merge fields were invalid."


def test_throttles_and_outages_are_retried_until_they_pass(
    tmp_path: Path, mailchimp: MailchimpFake, capsys: pytest.CaptureFixture[str]
) -> None:
    # about one attempt in four fails; six attempts all failing is rare enough (0.28**6 a request)
    # that a failed run here means retrying is broken, not bad luck
    mailchimp.inject(rate_429=0.1, rate_5xx=0.1, rate_timeout=0.0, seed=3)
    mailchimp.bare_403 = 0.1
    root = project(
        tmp_path, mailchimp, rows=40, batch_size=5, destination=destination(mailchimp, concurrency=2)
    )
    import syncback.destinations.mailchimp.client as module

    module.THROTTLE_WAIT_S = 0.01  # type: ignore[misc]
    try:
        code, summary = run_json(root, capsys)
    finally:
        module.THROTTLE_WAIT_S = 5.0  # type: ignore[misc]
    assert code == 0 and summary["delivered"] == 40 and mailchimp.injected() > 0, summary
    assert len(live(mailchimp)) == 40


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (429, {"title": "Too Many Requests"}, RateLimited),
        (403, None, RateLimited),  # bare: the throttle under load
        (403, {"title": "Forbidden", "detail": "You don't have permission"}, DestinationAuthError),
        (401, {"title": "API Key Invalid", "detail": "Your API key may be invalid"}, DestinationAuthError),
        (503, {"title": "Service Unavailable"}, DestinationUnavailable),
        (404, {"title": "Resource Not Found"}, SystemicError),
        (
            400,
            {"title": "Invalid Resource", "detail": "The resource submitted could not be validated."},
            RequestRejected,
        ),
    ],
)
def test_whole_request_answers_are_classified_in_one_place(
    mailchimp: MailchimpFake,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    body: dict[str, str] | None,
    error: type,
) -> None:
    def answer(*args: Any) -> tuple[int, dict[str, str], bytes]:
        payload = b"" if body is None else json.dumps({**body, "status": status}).encode()
        return status, {"Content-Type": "application/problem+json"}, payload

    monkeypatch.setattr(mailchimp, "answer", answer)
    with pytest.raises(error) as caught:
        client(mailchimp).write(upserts(2), "s")
    assert KEY not in str(caught.value) and "m0@example.com" not in str(caught.value)
    if error is DestinationAuthError:
        assert "destination.api_key" in str(caught.value)
    if error is SystemicError:
        assert "destination.list_id" in str(caught.value)


def test_a_revoked_key_stops_the_run_and_a_wrong_list_names_the_field(
    tmp_path: Path,
    mailchimp: MailchimpFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = project(tmp_path, mailchimp, rows=10)
    assert run_json(root, capsys)[0] == 0
    monkeypatch.setenv("MAILCHIMP_KEY", "ffffffffffffffffffffffffffffffff-us6")
    write_contacts(root / "wh.duckdb", contacts_rows(12))
    code, summary = run_json(root, capsys)
    assert code == 3 and summary["status"] == "failed" and "destination.api_key" in summary["error"], summary
    assert "ffffffff" not in summary["error"] and len(live(mailchimp)) == 10
    monkeypatch.setenv("MAILCHIMP_KEY", KEY)
    project(tmp_path, mailchimp, rows=12, destination=destination(mailchimp, list_id="nosuchlist"))
    code, summary = run_json(root, capsys)
    assert code == 3 and "destination.list_id" in summary["error"] and summary["rejected"] == 0, summary


def test_a_member_deleted_there_since_is_written_again_by_its_address(mailchimp: MailchimpFake) -> None:
    hashed = subscriber_hash("m0@example.com")
    (change,) = upserts(1)
    moved = Change("0", "upsert", "h", {**change.record, "merge_fields.FNAME": "again"}, hashed)
    # no member at the recorded hash: gone (the delivery then writes it by its address)
    assert client(mailchimp).write([moved], "s")[0].status == "gone"
    # clear and release of a member we hold no hash of are skipped
    assert (
        client(mailchimp).write([Change("1", "clear", None, {"merge_fields.FNAME": None})], "s")[0].status
        == "skipped"
    )
    # a release of a member gone since: gone (nothing left to empty)
    release = Change("1", "release", None, {"email_address": None, "merge_fields.FNAME": None}, hashed)
    assert client(mailchimp).write([release], "s")[0].status == "gone"


def test_a_released_member_keeps_its_address_and_consent_and_loses_the_mapped_fields(
    mailchimp: MailchimpFake,
) -> None:
    # a member the sync found (made by hand) whose row moved to another address: the address is the
    # member, so it stays, with its status; what the row had written is emptied, tags taken off
    hashed = mailchimp.add_by_hand("m0@example.com", "unsubscribed", {"FNAME": "N0"})
    mailchimp.members[hashed]["tags"] = {"vip"}
    release = Change(
        "0", "release", None, {"email_address": None, "merge_fields.FNAME": None, "tags.vip": None}, hashed
    )
    (outcome,) = client(mailchimp).write([release], "s")
    assert (outcome.status, outcome.destination_id) == ("delivered", hashed)
    member = live(mailchimp)["m0@example.com"]
    assert (member["status"], member["merge_fields"]["FNAME"], member["tags"]) == ("unsubscribed", "", set())


# ---- credentials, the data centre, and validate --------------------------------------------------------


def test_the_data_centre_comes_from_the_key() -> None:
    assert data_centre_url("0123abcd-us6") == "https://us6.api.mailchimp.com"
    with pytest.raises(ValueError):
        data_centre_url("0123abcd")


def test_a_key_without_its_data_centre_is_refused_naming_the_file_the_field_and_the_fix(
    tmp_path: Path,
    mailchimp: MailchimpFake,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = project(tmp_path, mailchimp, rows=1)
    monkeypatch.setenv("MAILCHIMP_KEY", "0123456789abcdef")
    assert main(["--project", str(root), "validate"]) == 2
    said = capsys.readouterr().err
    assert "syncs/contacts.yaml: destination.api_key: this is not a Mailchimp API key" in said
    assert "-us6" in said and "0123456789abcdef" not in said
    from syncback.destinations.registry import build_destination
    from syncback.secrets import SecretResolver

    with pytest.raises(SecretError, match="syncs/contacts.yaml: destination.api_key: this is not"):
        build_destination(load_project(root).sync("contacts"), SecretResolver())


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"mapping": {**MAPPING, "status": "plan"}}, "mapping.status: a sync never writes a member's status"),
        (
            {"mapping": {**MAPPING, "FNAME": "first_name"}},
            "mapping.FNAME: a Mailchimp member has no field 'FNAME'",
        ),
        (
            {"mapping": {**MAPPING, "merge_fields.fname": "first_name"}},
            "merge_fields.<TAG> (its tag in capitals",
        ),
        ({"mapping": {k: v for k, v in MAPPING.items() if k != "email_address"}}, "no field 'email_address'"),
        ({"mode": "insert"}, "a mailchimp destination takes upsert or mirror, not insert"),
        ({"destination_extra": {"status_for_new": None}}, "destination.status_for_new"),
        ({"destination_extra": {"status_for_new": "unsubscribed"}}, "destination.status_for_new"),
        ({"destination_extra": {"removal": "delete"}}, "destination.removal"),
        ({"destination_extra": {"api_key": "0123-us6"}}, "secrets are never written in the file"),
        ({"destination_extra": {"base_url": "http://us6.api.mailchimp.com"}}, "clear text"),
    ],
)
def test_validate_names_the_field_and_the_fix(
    tmp_path: Path, mailchimp: MailchimpFake, change: dict[str, Any], says: str
) -> None:
    extra = change.pop("destination_extra", {})
    spec = {k: v for k, v in destination(mailchimp, **extra).items() if v is not None}
    project(tmp_path, mailchimp, rows=1, destination=spec, **change)
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert says in str(caught.value) and "syncs/contacts.yaml" in str(caught.value)


# ---- addresses handed from member to member within one run ------------------------------------


def converge(world: World) -> RunRecord:
    held = held_emails(world)
    record = world.run()
    check_converged(world, record, held)
    return record


def test_a_new_row_taking_an_address_whose_member_moves_away_gets_a_member_of_its_own(tmp_path: Path) -> None:
    with World(tmp_path, "mailchimp", "upsert").started() as world:
        world.rows = {i: Row(f"p{i}@x.io") for i in range(1, 7)}
        world.write_model()
        world.run()
        # When every member moves to a new address and new rows take the old ones: Then the members
        # move first (phase 1) and the new rows are added after (phase 2), never into a member that
        # is about to move
        world.rows = {i: Row(f"q{i}@x.io") for i in range(1, 7)} | {
            10 + i: Row(f"p{i}@x.io", "new") for i in range(1, 7)
        }
        world.write_model()
        converge(world)
        assert len(world.records()) == 12


def test_a_chain_of_moves_within_a_batch_all_arrive(tmp_path: Path) -> None:
    with World(tmp_path, "mailchimp", "mirror").started() as world:
        world.rows = {1: Row("a@x.io"), 2: Row("b@x.io"), 3: Row("c@x.io")}
        world.write_model()
        world.run()
        world.rows = {1: Row("b@x.io"), 2: Row("c@x.io"), 3: Row("d@x.io")}
        world.write_model()
        assert converge(world).delivered == 3  # c→d, then b→c, then a→b


def test_two_rows_trading_addresses_trade_members_and_each_address_keeps_its_consent(tmp_path: Path) -> None:
    with World(tmp_path, "mailchimp", "upsert").started() as world:
        world.rows = {1: Row("a@x.io", "one"), 2: Row("b@x.io", "two")}
        world.write_model()
        world.run()
        members = world.fake.members  # type: ignore[attr-defined]
        members[subscriber_hash("a@x.io")]["status"] = "unsubscribed"  # the person at a@ opts out
        # When rows 1 and 2 swap addresses: neither member can move while the other holds its
        # address. Then the rows trade members: each is written into the member of its new address
        world.rows = {1: Row("b@x.io", "one"), 2: Row("a@x.io", "two")}
        world.write_model()
        converge(world)
        assert {r["email"]: r["customer_id"] for r in world.records()} == {"a@x.io": "2", "b@x.io": "1"}
        # and the consent stays with the address it was given for
        assert members[subscriber_hash("a@x.io")]["status"] == "unsubscribed"
        assert members[subscriber_hash("b@x.io")]["status"] == "subscribed"


# ---- the remaining paths of the client -------------------------------------------------------------


def test_mirror_clears_the_fields_and_tags_of_a_member_it_did_not_add(
    tmp_path: Path, mailchimp: MailchimpFake, capsys: pytest.CaptureFixture[str]
) -> None:
    mailchimp.add_by_hand("user60@example.com", "subscribed", {"FNAME": "Own", "OTHER": "kept"})
    root = project(
        tmp_path, mailchimp, rows=60, remove_not_created="clear_fields", guards={"max_delete_pct": 100}
    )
    assert run_json(root, capsys)[0] == 0
    assert live(mailchimp)["user60@example.com"]["tags"] == {"repeat-buyer"}
    # When its row leaves: Then the fields and the tag the sync maps are emptied, the rest kept,
    # and the member stays, with its status
    write_contacts(root / "wh.duckdb", contacts_rows(59))
    code, summary = run_json(root, capsys)
    assert code == 0 and summary["planned"]["removed"] == 1, summary
    member = live(mailchimp)["user60@example.com"]
    assert member["merge_fields"] == {"FNAME": "", "SCORE": "", "OTHER": "kept"} and member["tags"] == set()
    assert member["status"] == "subscribed"


def test_removing_a_member_already_gone_or_never_recorded_loses_nothing(mailchimp: MailchimpFake) -> None:
    archive = [
        Change("1", "archive", destination_id=subscriber_hash("nobody@example.com")),
        Change("2", "archive"),
    ]
    outcomes = client(mailchimp).write(archive, "s")
    assert [o.status for o in outcomes] == ["delivered", "skipped"]
    assert "nothing to remove" in str(outcomes[1].reason)


def test_a_member_the_answer_does_not_mention_is_rejected_not_taken_as_delivered(
    mailchimp: MailchimpFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    def answer(*args: Any) -> tuple[int, dict[str, str], bytes]:
        return (
            200,
            {"Content-Type": "application/json"},
            json.dumps({"new_members": [], "errors": []}).encode(),
        )

    monkeypatch.setattr(mailchimp, "answer", answer)
    outcomes = client(mailchimp).write(upserts(2), "s")
    assert [o.status for o in outcomes] == ["rejected", "rejected"]
    assert outcomes[0].reason == "Mailchimp's answer did not mention this member"


def test_an_existing_member_whose_audience_is_gone_stops_the_run_naming_the_list(
    mailchimp: MailchimpFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailchimp.add_by_hand("m0@example.com", "subscribed")
    real = mailchimp.answer

    def answer(
        method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        if method == "PUT":  # the audience was deleted between the batch and the member's update
            return 404, {"Content-Type": "application/problem+json"}, b'{"title": "Resource Not Found"}'
        return real(method, target, headers, body)

    monkeypatch.setattr(mailchimp, "answer", answer)
    with pytest.raises(SystemicError, match="destination.list_id"):
        client(mailchimp).write(upserts(1), "s")
