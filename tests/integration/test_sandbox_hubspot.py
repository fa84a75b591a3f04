"""The HubSpot sandbox answers as HubSpot documents it, over real HTTP on loopback."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from syncback.sandbox.hubspot import Faults, HubSpotSandbox

TOKEN = "test-token"


@pytest.fixture
def sandbox() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox(token=TOKEN, requests_per_window=None) as sb:
        yield sb


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {TOKEN}"
        yield s


def post(
    session: requests.Session, sb: HubSpotSandbox, action: str, inputs: Any, object_type: str = "contacts"
) -> requests.Response:
    return session.post(
        f"{sb.url}/crm/v3/objects/{object_type}/batch/{action}", json={"inputs": inputs}, timeout=5
    )


def contact(email: str, trace: str | None = None, **properties: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"id": email, "idProperty": "email", "properties": {"email": email, **properties}}
    if trace is not None:
        item["objectWriteTraceId"] = trace
    return item


# ---- batch writes ----------------------------------------------------------------------------------


def test_upsert_creates_then_updates_the_same_contact(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # Given a contact upserted once
    first = post(session, sandbox, "upsert", [contact("Ada@Example.com", "k1", firstname="Ada", age=36)])
    # When the same email, cased differently, is upserted again with new values
    second = post(
        session, sandbox, "upsert", [contact("ada@example.COM", "k1", firstname="Augusta", age=None)]
    )
    # Then the first created and the second updated the one record, with the email lowercased
    assert first.status_code == 200 and second.status_code == 200
    created, updated = first.json()["results"][0], second.json()["results"][0]
    assert (created["new"], updated["new"]) == (True, False)
    assert created["id"] == updated["id"] and updated["objectWriteTraceId"] == "k1"
    assert second.json()["status"] == "COMPLETE"
    assert updated["properties"]["hs_object_id"] == created["id"]
    [stored] = sandbox.objects("contacts")
    assert stored["properties"] == {"email": "ada@example.com", "firstname": "Augusta", "age": ""}  # cleared
    assert sandbox.stats()["created"] == 1 and sandbox.stats()["updated"] == 1


def test_upsert_stores_numbers_and_booleans_as_strings(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # Given a contact with a number, a float, a boolean and an empty string
    response = post(session, sandbox, "upsert", [contact("n@x.io", score=3, ratio=0.5, vip=True, city="")])
    # Then HubSpot's string forms are stored
    assert response.status_code == 200
    assert sandbox.objects("contacts")[0]["properties"] == {
        "email": "n@x.io",
        "score": "3",
        "ratio": "0.5",
        "vip": "true",
        "city": "",
    }


def test_upsert_partial_failure_answers_207_with_one_error_per_bad_input(session: requests.Session) -> None:
    # Given a sandbox that rejects one email value
    with HubSpotSandbox(faults=Faults(reject_values={"no@x.io"})) as sb:
        inputs = [
            contact("ok@x.io", "t-ok"),
            contact("not-an-email", "t-email"),
            contact("no@x.io", "t-rejected"),
            contact("nested@x.io", "t-nested", address={"city": "Oslo"}),
        ]
        # When they are upserted in one batch
        response = post(session, sb, "upsert", inputs)
        # Then only the good one is written and each bad one has its own error item
        assert response.status_code == 207
        body = response.json()
        assert body["numErrors"] == 3 and len(body["errors"]) == 3
        assert [r["objectWriteTraceId"] for r in body["results"]] == ["t-ok"]
        errors = {e["objectWriteTraceId"]: e for e in body["errors"]}
        assert errors["t-email"]["message"] == "Email address not-an-email is invalid"
        assert errors["t-email"]["subCategory"] == "INVALID_EMAIL"
        assert errors["t-email"]["context"] == {"id": ["not-an-email"], "objectWriteTraceId": ["t-email"]}
        assert errors["t-rejected"]["message"].startswith("Property values were not valid")
        assert errors["t-nested"]["errors"][0]["in"] == "address"
        assert {e["category"] for e in body["errors"]} == {"VALIDATION_ERROR"}
        assert [o["properties"]["email"] for o in sb.objects("contacts")] == ["ok@x.io"]


def test_upsert_with_the_same_id_twice_fails_the_whole_request(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # When one batch names the same email twice (in two casings)
    response = post(session, sandbox, "upsert", [contact("a@x.io"), contact("A@x.io")])
    # Then HubSpot refuses the batch and nothing is written
    assert response.status_code == 400 and response.json()["category"] == "VALIDATION_ERROR"
    assert "Duplicate IDs" in response.json()["message"]
    assert sandbox.objects("contacts") == []


def test_upsert_by_a_non_unique_property_is_refused(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # When the idProperty is not the object's unique property
    response = post(session, sandbox, "upsert", [{"id": "Ada", "idProperty": "firstname", "properties": {}}])
    # Then the whole request is refused, as HubSpot does
    assert response.status_code == 400
    assert "non-unique 0-1 property firstname" in response.json()["message"]


def test_id_property_may_come_as_a_query_parameter(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # When idProperty is given in the query string only
    response = session.post(
        f"{sandbox.url}/crm/v3/objects/companies/batch/upsert?idProperty=domain",
        json={"inputs": [{"id": "Acme.com", "properties": {"name": "Acme"}}]},
    )
    # Then the company is upserted by its domain
    assert response.status_code == 200
    assert sandbox.objects("companies")[0]["properties"] == {"domain": "acme.com", "name": "Acme"}


def test_create_conflict_fails_the_whole_request_with_409(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # Given an existing contact
    existing = post(session, sandbox, "upsert", [contact("old@x.io")]).json()["results"][0]["id"]
    # When a create batch holds a new contact and the existing one
    inputs = [
        {"properties": {"email": "new@x.io"}},
        {"properties": {"email": "OLD@x.io"}, "objectWriteTraceId": "t"},
    ]
    response = post(session, sandbox, "create", inputs)
    # Then the whole request is a 409 naming the existing id, and the new contact was not created
    assert response.status_code == 409
    body = response.json()
    assert body["category"] == "CONFLICT" and body["status"] == "error" and body["correlationId"]
    assert body["message"] == f"Contact already exists. Existing ID: {existing}"
    assert len(sandbox.objects("contacts")) == 1
    # And a create batch repeating one email is a 409 too
    repeated = post(session, sandbox, "create", [{"properties": {"email": "z@x.io"}}] * 2)
    assert repeated.status_code == 409 and len(sandbox.objects("contacts")) == 1


def test_create_answers_201_and_207_only_with_trace_ids(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # When a clean batch is created
    created = post(
        session, sandbox, "create", [{"properties": {"email": "c@x.io"}, "objectWriteTraceId": "1"}]
    )
    # Then it answers 201 with the record
    assert created.status_code == 201 and created.json()["results"][0]["objectWriteTraceId"] == "1"
    # When a batch with a bad email has a trace id on every input, it is a 207
    traced = [
        {"properties": {"email": "d@x.io"}, "objectWriteTraceId": "a"},
        {"properties": {"email": "bad"}, "objectWriteTraceId": "b"},
    ]
    assert post(session, sandbox, "create", traced).status_code == 207
    # And without trace ids HubSpot fails the whole batch, writing nothing
    untraced = [{"properties": {"email": "e@x.io"}}, {"properties": {"email": "bad"}}]
    response = post(session, sandbox, "create", untraced)
    assert response.status_code == 400 and response.json()["category"] == "VALIDATION_ERROR"
    assert sorted(o["properties"]["email"] for o in sandbox.objects("contacts")) == ["c@x.io", "d@x.io"]


def test_update_of_an_unknown_record_is_object_not_found(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # Given one contact
    known = post(session, sandbox, "upsert", [contact("u@x.io")]).json()["results"][0]["id"]
    # When a batch updates it by id, and an unknown id and an unknown email
    inputs = [
        {"id": known, "properties": {"firstname": "U"}, "objectWriteTraceId": "known"},
        {"id": "999999", "properties": {"firstname": "X"}, "objectWriteTraceId": "ghost"},
        {"id": "nobody@x.io", "idProperty": "email", "properties": {}, "objectWriteTraceId": "ghost-email"},
    ]
    response = post(session, sandbox, "update", inputs)
    # Then the known one is updated and each unknown one is an OBJECT_NOT_FOUND error item
    assert response.status_code == 207
    body = response.json()
    assert [r["id"] for r in body["results"]] == [known]
    assert {e["objectWriteTraceId"]: e["category"] for e in body["errors"]} == {
        "ghost": "OBJECT_NOT_FOUND",
        "ghost-email": "OBJECT_NOT_FOUND",
    }
    assert sandbox.objects("contacts")[0]["properties"]["firstname"] == "U"
    # And a clean update answers 200
    by_email = [{"id": "U@x.io", "idProperty": "email", "properties": {"lastname": "V"}}]
    assert post(session, sandbox, "update", by_email).status_code == 200


def test_update_to_an_email_another_contact_has_is_a_conflict(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # Given two contacts
    ids = [
        r["id"]
        for r in post(session, sandbox, "upsert", [contact("p@x.io"), contact("q@x.io")]).json()["results"]
    ]
    # When the first is given the second's email
    response = post(session, sandbox, "update", [{"id": ids[0], "properties": {"email": "q@x.io"}}])
    # Then that input is a CONFLICT and the first keeps its email
    assert response.status_code == 207 and response.json()["errors"][0]["category"] == "CONFLICT"
    assert sandbox.objects("contacts")[0]["properties"]["email"] == "p@x.io"
    # And clearing both emails is no conflict: an empty value is not a unique key
    cleared = post(session, sandbox, "update", [{"id": i, "properties": {"email": ""}} for i in ids])
    assert cleared.status_code == 200
    assert [o["properties"]["email"] for o in sandbox.objects("contacts")] == ["", ""]


def test_archive_answers_204_and_hides_the_record(sandbox: HubSpotSandbox, session: requests.Session) -> None:
    # Given a contact
    oid = post(session, sandbox, "upsert", [contact("gone@x.io")]).json()["results"][0]["id"]
    # When it is archived together with an unknown id
    response = post(session, sandbox, "archive", [{"id": oid}, {"id": "424242"}])
    # Then the answer is an empty 204, reads no longer find it, and an upsert creates a new record
    assert response.status_code == 204 and response.content == b""
    assert session.get(f"{sandbox.url}/crm/v3/objects/contacts/{oid}").status_code == 404
    assert sandbox.objects("contacts") == []
    assert sandbox.objects("contacts", include_archived=True)[0]["archived"] is True
    again = post(session, sandbox, "upsert", [contact("gone@x.io")]).json()["results"][0]
    assert again["new"] is True and again["id"] != oid
    assert sandbox.stats()["archived"] == 1


def test_more_than_100_inputs_or_bad_json_is_a_400(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # When a batch holds 101 inputs
    response = post(session, sandbox, "upsert", [contact(f"c{i}@x.io") for i in range(101)])
    # Then it is refused whole
    assert response.status_code == 400
    assert response.json()["category"] == "VALIDATION_ERROR" and "limit of 100" in response.json()["message"]
    assert sandbox.objects("contacts") == []
    # And malformed JSON and a missing inputs list are 400s too
    url = f"{sandbox.url}/crm/v3/objects/contacts/batch/upsert"
    assert session.post(url, data=b"{not json", timeout=5).status_code == 400
    assert session.post(url, json={"records": []}, timeout=5).status_code == 400


def test_fail_batch_values_fail_the_whole_request(session: requests.Session) -> None:
    # Given a sandbox that fails any request holding one value
    with HubSpotSandbox(faults=Faults(fail_batch_values={"poison@x.io"})) as sb:
        # When a batch holds it among good inputs
        response = post(session, sb, "upsert", [contact("fine@x.io"), contact("poison@x.io")])
        # Then the request is a 400 and nothing is written
        assert response.status_code == 400 and response.json()["category"] == "VALIDATION_ERROR"
        assert sb.objects("contacts") == []


# ---- auth and limits ---------------------------------------------------------------------------------


def test_missing_wrong_and_forbidden_tokens(sandbox: HubSpotSandbox) -> None:
    url = f"{sandbox.url}/crm/v3/objects/contacts/batch/upsert"
    body = {"inputs": [contact("a@x.io")]}
    # When no token, a wrong token and the forbidden token are sent
    missing = requests.post(url, json=body, timeout=5)
    wrong = requests.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=5)
    forbidden = requests.post(url, json=body, headers={"Authorization": "Bearer forbidden-token"}, timeout=5)
    # Then they are 401, 401 and 403 with HubSpot's categories, and nothing is written
    assert (missing.status_code, wrong.status_code, forbidden.status_code) == (401, 401, 403)
    assert missing.json()["category"] == wrong.json()["category"] == "INVALID_AUTHENTICATION"
    assert missing.json()["message"].startswith("Authentication credentials not found")
    assert forbidden.json()["category"] == "MISSING_SCOPES"
    assert sandbox.objects("contacts") == []


def test_rolling_window_answers_429_then_recovers(session: requests.Session) -> None:
    # Given a limit of 3 requests a second
    with HubSpotSandbox(requests_per_window=3, window_seconds=1.0) as sb:
        # When 4 requests come at once
        answers = [post(session, sb, "upsert", [contact(f"r{i}@x.io")]) for i in range(4)]
        # Then the 4th is HubSpot's ten-secondly 429, without Retry-After, and wrote nothing
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["X-HubSpot-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert answers[0].headers["X-HubSpot-RateLimit-Max"] == "3"
        assert answers[0].headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "1000"
        body = answers[3].json()
        assert body["status"] == "error" and body["errorType"] == "RATE_LIMIT"
        assert body["policyName"] == "TEN_SECONDLY_ROLLING"
        assert body["message"] == "You have reached your ten_secondly_rolling limit."
        assert "Retry-After" not in answers[3].headers
        assert len(sb.objects("contacts")) == 3 and sb.stats()["rate_limited"] == 1
        # And once the window has rolled past, requests pass again
        time.sleep(1.05)
        assert post(session, sb, "upsert", [contact("r3@x.io")]).status_code == 200


def test_daily_limit_answers_429_daily(session: requests.Session) -> None:
    # Given a daily limit of 2
    with HubSpotSandbox(daily_limit=2) as sb:
        answers = [post(session, sb, "upsert", [contact(f"d{i}@x.io")]) for i in range(3)]
        # Then the third request hits the DAILY policy
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].json()["policyName"] == "DAILY"
        assert answers[2].json()["message"] == "You have reached your daily limit."
        assert answers[0].headers["X-HubSpot-RateLimit-Daily"] == "2"
        assert [a.headers["X-HubSpot-RateLimit-Daily-Remaining"] for a in answers] == ["1", "0", "0"]


# ---- injected faults ----------------------------------------------------------------------------------


def _statuses(session: requests.Session, sb: HubSpotSandbox, n: int) -> list[int]:
    return [post(session, sb, "upsert", [contact(f"f{i}@x.io")]).status_code for i in range(n)]


def test_injected_rates_are_respected_and_seeded(session: requests.Session) -> None:
    # Given 20% injected 429s, 10% 5xx and 10% 423s, seeded
    faults = Faults(rate_429=0.2, rate_5xx=0.1, rate_423=0.1, seed=7)
    with HubSpotSandbox(requests_per_window=None, faults=faults) as sb:
        # When 400 requests are sent
        statuses = _statuses(session, sb, 400)
        counts = Counter(statuses)
        # Then each fault shows up at about its rate, 5xx only as 502/503/504
        assert 55 <= counts[429] <= 105
        assert 20 <= counts[502] + counts[503] + counts[504] <= 60
        assert 20 <= counts[423] <= 60
        assert set(counts) <= {200, 429, 423, 502, 503, 504}
        # And faulted requests wrote nothing
        assert len(sb.objects("contacts")) == len({i for i, s in enumerate(statuses) if s == 200})
        assert sb.stats()["injected"]["429"] == counts[429]
        # And the same seed replays the same statuses
        sb.set_faults(faults)
        sb.reset()
        assert _statuses(session, sb, 400) == statuses


def test_injected_5xx_body_is_hubspot_shaped(session: requests.Session) -> None:
    with HubSpotSandbox(faults=Faults(rate_5xx=1.0, seed=1)) as sb:
        # When every request is a server error
        response = post(session, sb, "upsert", [contact("a@x.io")])
        # Then it is one of the documented statuses with a HubSpot error body
        assert response.status_code in (502, 503, 504)
        assert (
            response.json()["status"] == "error"
            and response.json()["category"]
            and response.json()["message"]
        )
        assert sb.objects("contacts") == []


def test_retry_after_is_sent_on_injected_429_only_when_configured(session: requests.Session) -> None:
    with HubSpotSandbox(faults=Faults(rate_429=1.0, retry_after_429=0.25)) as sb:
        response = post(session, sb, "upsert", [contact("a@x.io")])
        assert response.status_code == 429 and response.headers["Retry-After"] == "0.25"
        assert response.json()["policyName"] == "TEN_SECONDLY_ROLLING"
        sb.set_faults(Faults(rate_429=1.0))
        assert "Retry-After" not in post(session, sb, "upsert", [contact("a@x.io")]).headers


def test_reset_fault_drops_the_connection_without_writing(session: requests.Session) -> None:
    with HubSpotSandbox(faults=Faults(rate_reset=1.0)) as sb:
        # When the server resets the connection
        with pytest.raises(requests.ConnectionError):
            post(session, sb, "upsert", [contact("a@x.io")])
        # Then nothing was written, and the next connection works
        assert sb.objects("contacts") == []
        sb.set_faults(Faults())
        assert post(session, sb, "upsert", [contact("a@x.io")]).status_code == 200


def test_timeout_fault_writes_then_answers_too_late(session: requests.Session) -> None:
    with HubSpotSandbox(faults=Faults(rate_timeout=1.0, timeout_seconds=1.0)) as sb:
        # When the client gives up before the server answers
        started = time.monotonic()
        with pytest.raises(requests.Timeout):
            session.post(
                f"{sb.url}/crm/v3/objects/contacts/batch/upsert",
                json={"inputs": [contact("t@x.io")]},
                timeout=0.3,
            )
        # Then the client waited its own timeout, and the write had already happened
        assert time.monotonic() - started < 0.9
        assert [o["properties"]["email"] for o in sb.objects("contacts")] == ["t@x.io"]


def test_slow_fault_delays_then_answers(session: requests.Session) -> None:
    with HubSpotSandbox(faults=Faults(slow_rate=1.0, slow_seconds=0.3)) as sb:
        started = time.monotonic()
        response = post(session, sb, "upsert", [contact("s@x.io")])
        assert response.status_code == 200 and time.monotonic() - started >= 0.3


def test_admin_endpoints_set_faults_report_stats_and_reset(
    sandbox: HubSpotSandbox, session: requests.Session
) -> None:
    # Given faults set over HTTP
    answer = requests.post(f"{sandbox.url}/_sandbox/faults", json={"reject_values": ["x@x.io"]}, timeout=5)
    assert answer.status_code == 200 and answer.json()["reject_values"] == ["x@x.io"]
    assert (
        requests.post(f"{sandbox.url}/_sandbox/faults", json={"rate_nope": 1}, timeout=5).status_code == 400
    )
    # When a rejected and a good contact are upserted
    post(session, sandbox, "upsert", [contact("x@x.io"), contact("y@x.io")])
    # Then stats and objects are visible without auth, and reset forgets them
    stats = requests.get(f"{sandbox.url}/_sandbox/stats", timeout=5).json()
    assert stats["by_status"] == {"207": 1} and stats["inputs"] == 2 and stats["created"] == 1
    objects = requests.get(f"{sandbox.url}/_sandbox/objects/contacts", timeout=5).json()
    assert [o["properties"]["email"] for o in objects] == ["y@x.io"]
    assert requests.post(f"{sandbox.url}/_sandbox/reset", timeout=5).status_code == 200
    assert sandbox.objects("contacts") == [] and sandbox.stats()["requests"] == 0


# ---- reads, storage, CLI ------------------------------------------------------------------------------


def test_reads_by_id_by_email_and_in_pages(sandbox: HubSpotSandbox, session: requests.Session) -> None:
    # Given 25 contacts
    for start in (0, 20):
        post(
            session, sandbox, "upsert", [contact(f"p{i:02}@x.io") for i in range(start, min(start + 20, 25))]
        )
    # When they are read in pages of 10
    pages, after = [], None
    while True:
        params = {"limit": 10, **({"after": after} if after else {})}
        body = session.get(f"{sandbox.url}/crm/v3/objects/contacts", params=params, timeout=5).json()
        pages.append(body["results"])
        after = body.get("paging", {}).get("next", {}).get("after")
        if after is None:
            break
    # Then three pages hold every contact once, in id order
    assert [len(p) for p in pages] == [10, 10, 5]
    ids = [int(r["id"]) for p in pages for r in p]
    assert ids == sorted(ids) and len(set(ids)) == 25
    # And one contact reads by id and by email
    one = session.get(f"{sandbox.url}/crm/v3/objects/contacts/{ids[3]}", timeout=5).json()
    by_email = session.get(
        f"{sandbox.url}/crm/v3/objects/contacts/P03@x.io", params={"idProperty": "email"}, timeout=5
    ).json()
    assert one["id"] == by_email["id"] == str(ids[3]) and one["properties"]["email"] == "p03@x.io"


def test_sqlite_keeps_objects_across_a_restart(tmp_path: Path, session: requests.Session) -> None:
    db = str(tmp_path / "hubspot.db")
    # Given objects written by one sandbox
    with HubSpotSandbox(db_path=db) as first:
        ids = [
            r["id"]
            for r in post(session, first, "upsert", [contact("a@x.io"), contact("b@x.io")]).json()["results"]
        ]
        post(session, first, "archive", [{"id": ids[1]}])
    # When a new sandbox opens the same file
    with HubSpotSandbox(db_path=db) as second:
        # Then it has them, upserts match them, and new ids do not collide
        assert [o["id"] for o in second.objects("contacts", include_archived=True)] == ids
        assert second.objects("contacts", include_archived=True)[1]["archived"] is True
        again = post(session, second, "upsert", [contact("A@x.io"), contact("c@x.io")]).json()["results"]
        assert again[0]["id"] == ids[0] and again[0]["new"] is False
        assert int(again[1]["id"]) > max(int(i) for i in ids)


def test_cli_prints_its_address_and_exits_cleanly_on_sigterm() -> None:
    code = "from syncback.sandbox.hubspot import main; raise SystemExit(main(['--port', '0']))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        # When the CLI starts on port 0
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "the sandbox printed nothing within 15 s"
        line = proc.stdout.readline().strip()
        # Then it names the real port, serves on it, and exits 0 on SIGTERM
        assert line.startswith("HubSpot sandbox listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert int(url.rsplit(":", 1)[1]) > 0
        assert json.loads(requests.get(f"{url}/_sandbox/stats", timeout=5).text)["requests"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
