"""The webhook destination against a Standard Webhooks receiver on loopback."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from syncback.destinations.base import Change
from syncback.destinations.webhook import WebhookDestinationConfig
from syncback.destinations.webhook.client import WebhookDestination
from syncback.errors import (
    DestinationAuthError,
    DestinationUnavailable,
    PermanentError,
    RateLimited,
    RequestRejected,
    SyncbackError,
    SystemicError,
)
from tests.fakes.webhook_receiver import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"syncback-test-signing-key-32byte").decode()
SYNC = "crm_contacts"
# values that must never surface in a reason or an error message
PRIVATE = {
    "email": "ada.private-7f3a@example.com",
    "phone": "+44 20 7946 0958",
    "note": "Zoë’s ✓ secret note",
}


_opened: list[WebhookDestination] = []


@pytest.fixture(autouse=True)
def _close_destinations() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as running:
        yield running


def webhook(
    url: str,
    secret: str | None = SECRET,
    timeout_s: float = 5.0,
    clock: Callable[[], float] = time.time,
    **kwargs: Any,
) -> WebhookDestination:
    config = WebhookDestinationConfig.model_validate({"type": "webhook", "url": url, "timeout_s": timeout_s})
    _opened.append(WebhookDestination(config, secret, SYNC, clock=clock, **kwargs))
    return _opened[-1]


def upserts(*keys: str) -> list[Change]:
    return [Change(key, "upsert", record={"id": key, **PRIVATE}) for key in keys]


def test_a_signed_batch_is_verified_and_delivered(receiver: WebhookReceiver) -> None:
    # Given a receiver holding our secret
    destination = webhook(receiver.url)
    changes = [*upserts("c1", "c2"), Change("c3", "archive", destination_id="ext-3")]

    # When a batch is written
    outcomes = destination.write(changes)

    # Then the receiver verified the signature and stored the batch as sent
    assert [(o.key, o.status, o.destination_id) for o in outcomes] == [
        ("c1", "delivered", "c1"),
        ("c2", "delivered", "c2"),
        ("c3", "delivered", "ext-3"),
    ]
    assert receiver.received == [
        {
            "sync": SYNC,
            "records": [
                {"key": "c1", "action": "upsert", "fields": {"id": "c1", **PRIVATE}},
                {"key": "c2", "action": "upsert", "fields": {"id": "c2", **PRIVATE}},
                {"key": "c3", "action": "archive", "destination_id": "ext-3"},
            ],
        }
    ]


def test_each_request_has_a_new_id_over_one_kept_alive_connection(receiver: WebhookReceiver) -> None:
    # Given one destination
    destination = webhook(receiver.url)

    # When it writes three batches
    for key in ("a", "b", "c"):
        destination.write(upserts(key))

    # Then all were accepted, each under its own webhook-id, over a single connection
    ids = [headers["webhook-id"] for headers in receiver.headers]
    assert len(receiver.received) == 3
    assert len(set(ids)) == 3
    assert all(i.startswith("msg_") for i in ids)
    assert receiver.connections == 1


def test_a_retried_batch_keeps_its_webhook_id_so_the_receiver_processes_it_once(
    receiver: WebhookReceiver,
) -> None:
    # Given one destination (the receiver uses webhook-id as an idempotency key)
    destination = webhook(receiver.url)

    # When the same batch goes out twice (a retry after a timeout), then another batch
    destination.write(upserts("a"))
    destination.write(upserts("a"))
    destination.write(upserts("b"))

    # Then the receiver answered all three but processed the repeat only once
    assert receiver.requests == 3
    assert [r["records"][0]["key"] for r in receiver.received] == ["a", "b"]
    assert len({headers["webhook-id"] for headers in receiver.headers}) == 2


def test_the_rejected_list_of_a_2xx_rejects_only_those_records(receiver: WebhookReceiver) -> None:
    # Given a receiver that refuses two keys and, carelessly, echoes their fields in the reason
    receiver.reject_keys = {"bad1", "bad2"}
    receiver.reject_reason = "blocked by policy: {fields}"

    # When a batch holding them is written
    outcomes = webhook(receiver.url).write(upserts("ok1", "bad1", "ok2", "bad2"))

    # Then those two are rejected with the receiver's reason, the others delivered
    assert [(o.key, o.status) for o in outcomes] == [
        ("ok1", "delivered"),
        ("bad1", "rejected"),
        ("ok2", "delivered"),
        ("bad2", "rejected"),
    ]
    assert str(outcomes[1].reason).startswith("blocked by policy: ")
    # And the values the receiver echoed were taken out of the reason
    assert_no_private_value(str(outcomes[1].reason) + str(outcomes[3].reason))


def test_a_400_for_the_batch_is_request_rejected(receiver: WebhookReceiver) -> None:
    # Given a receiver that refuses any request holding key "poison"
    receiver.reject_batch_if_key_in = {"poison"}

    # When a batch holding it is written
    with pytest.raises(RequestRejected) as raised:
        webhook(receiver.url).write(upserts("ok", "poison"))

    # Then the whole request is refused, with the status and the receiver's words
    assert "answered 400" in str(raised.value)
    assert "batch refused" in str(raised.value)
    assert receiver.received == []


def test_a_wrong_secret_makes_the_receiver_answer_401(receiver: WebhookReceiver) -> None:
    # Given a sender signing with another key
    destination = webhook(receiver.url, secret="whsec_" + base64.b64encode(b"x" * 32).decode())

    # When it writes
    with pytest.raises(DestinationAuthError) as raised:
        destination.write(upserts("a"))

    # Then the receiver refused it with 401, and nothing was stored
    assert "answered 401" in str(raised.value)
    assert receiver.received == []


def test_an_unsigned_request_is_refused_by_a_receiver_that_expects_signatures(
    receiver: WebhookReceiver,
) -> None:
    # Given a sender with no secret
    # When it writes to a receiver that verifies signatures
    with pytest.raises(DestinationAuthError):
        webhook(receiver.url, secret=None).write(upserts("a"))

    # Then nothing was stored
    assert receiver.received == []


def test_a_timestamp_outside_the_tolerance_is_refused(receiver: WebhookReceiver) -> None:
    # Given a sender whose clock is 10 minutes slow (the receiver tolerates 5)
    destination = webhook(receiver.url, clock=lambda: time.time() - 600)

    # When it writes, Then the receiver refuses the replay-looking request
    with pytest.raises(DestinationAuthError):
        destination.write(upserts("a"))
    assert receiver.received == []


def test_the_receiver_accepts_any_matching_signature_of_a_rotation_list(receiver: WebhookReceiver) -> None:
    # Given a request signed with an old key and the current one, space-separated (key rotation)
    body = b'{"sync":"s","records":[{"key":"k","action":"upsert","fields":{}}]}'
    msg_id, timestamp = "msg_rotation", str(int(time.time()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    good = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
    headers = {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": timestamp}
    rotated = f"v1,{base64.b64encode(b'0' * 32).decode()} v1a,ignored v1,{good.decode()}"

    # When it is posted with a tampered body, with the right MAC under another version or cut short,
    # and as is
    def post(data: bytes, signature: str) -> int:
        answer = requests.post(
            receiver.url, data=data, headers={**headers, "webhook-signature": signature}, timeout=5
        )
        return answer.status_code

    tampered = post(body.replace(b'"k"', b'"j"'), rotated)
    wrong_version = post(body, f"v2,{good.decode()}")
    truncated = post(body, "v1," + base64.b64encode(base64.b64decode(good)[:16]).decode())
    accepted = post(body, rotated)

    # Then only the untampered v1 one verifies, through the second v1 signature of its list
    assert (tampered, wrong_version, truncated, accepted) == (401, 401, 401, 200)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth_errors(receiver: WebhookReceiver, status: int) -> None:
    # Given a receiver (or a proxy in front of it) refusing our credentials
    receiver.fail_next(status)

    # When a batch is written, Then the run must stop
    with pytest.raises(DestinationAuthError) as raised:
        webhook(receiver.url).write(upserts("a"))
    assert f"answered {status}" in str(raised.value)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("http-date", 120.0), (None, None)],
)
def test_429_is_rate_limited_with_the_retry_after_it_gave(
    receiver: WebhookReceiver, retry_after: str | None, expected: float | None
) -> None:
    # Given a 429 whose Retry-After is seconds, an HTTP date 2 minutes after our clock, or absent
    now = 1_800_000_000.0
    if retry_after == "http-date":
        retry_after = email.utils.formatdate(now + 120, usegmt=True)
    receiver.fail_next(429, headers={"Retry-After": retry_after} if retry_after else None)

    # When a batch is written
    with pytest.raises(RateLimited) as raised:
        webhook(receiver.url, clock=lambda: now).write(upserts("a"))

    # Then retry_after says how long to wait
    assert raised.value.retry_after == expected


@pytest.mark.parametrize("status", [408, 425])
def test_408_and_425_are_rate_limited_too(receiver: WebhookReceiver, status: int) -> None:
    # Given a receiver answering "too early" or "request timeout"
    receiver.fail_next(status)

    # When a batch is written, Then it is worth retrying later
    with pytest.raises(RateLimited):
        webhook(receiver.url).write(upserts("a"))


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_destination_unavailable(receiver: WebhookReceiver, status: int) -> None:
    # Given a receiver that is down and says when to come back
    receiver.fail_next(status, headers={"Retry-After": "30"})

    # When a batch is written
    with pytest.raises(DestinationUnavailable) as raised:
        webhook(receiver.url).write(upserts("a"))

    # Then it is transient and carries the wait
    assert raised.value.retry_after == 30.0


def test_a_retry_after_the_failure_delivers(receiver: WebhookReceiver) -> None:
    # Given a receiver that fails once with 503
    receiver.fail_next(503)
    destination = webhook(receiver.url)
    with pytest.raises(DestinationUnavailable):
        destination.write(upserts("a"))

    # When the same batch is written again
    outcomes = destination.write(upserts("a"))

    # Then it is delivered once
    assert [o.status for o in outcomes] == ["delivered"]
    assert receiver.requests == 2
    assert len(receiver.received) == 1


def test_a_receiver_slower_than_the_timeout_is_unavailable(receiver: WebhookReceiver) -> None:
    # Given a receiver that takes 0.5 s to answer and a 0.05 s timeout
    receiver.delay_s = 0.5

    # When a batch is written
    started = time.monotonic()
    with pytest.raises(DestinationUnavailable) as raised:
        webhook(receiver.url, timeout_s=0.05).write(upserts("a"))

    # Then it gives up at the timeout, not when the receiver answers
    assert time.monotonic() - started < 0.4
    assert "within 0.05s" in str(raised.value)


def test_a_closed_port_is_unavailable() -> None:
    # Given a port nothing listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # When a batch is written there
    with pytest.raises(DestinationUnavailable) as raised:
        webhook(f"http://127.0.0.1:{port}/hooks").write(upserts("a"))

    # Then the connection failure is transient, and the message names the host and port
    assert f"no answer from http://127.0.0.1:{port}" in str(raised.value)


def test_410_gone_is_permanent_and_says_stop(receiver: WebhookReceiver) -> None:
    # Given a receiver answering 410 Gone
    receiver.fail_next(410)

    # When a batch is written
    with pytest.raises(PermanentError) as raised:
        webhook(receiver.url).write(upserts("a"))

    # Then it is a permanent failure that no splitting of the batch can fix
    assert not isinstance(raised.value, RequestRejected | DestinationAuthError)
    assert "410 Gone" in str(raised.value)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed(receiver: WebhookReceiver, status: int) -> None:
    # Given a receiver redirecting to itself (a followed redirect would be accepted there)
    receiver.fail_next(status, headers={"Location": receiver.url + "/moved"})

    # When a batch is written
    with pytest.raises(SystemicError) as raised:
        webhook(receiver.url).write(upserts("a"))

    # Then only one request was made, and the error says why and which field to fix, without the
    # path (a URL's path may hold a token)
    assert receiver.requests == 1
    assert receiver.received == []
    assert "redirects are not followed" in str(raised.value) and raised.value.field == "destination.url"
    assert "/moved" not in str(raised.value)


def test_unicode_and_large_records_arrive_byte_exact(receiver: WebhookReceiver) -> None:
    # Given records with non-ASCII text, separators JSON treats specially, nulls, nesting and 2 MB of text
    fields: list[dict[str, Any]] = [
        {"name": "Zoë Ñúñez", "city": "東京", "rtl": "مرحبا", "emoji": "👩🏽‍💻🇫🇷", "combining": "e\u0301"},
        {"sep": 'line\u2028para\u2029tab\t"quote" back\\slash', "nul": "a\x00b", "none": None},
        {"nested": {"list": [1, 2.5, True, None, {"deep": "ü"}]}, "big_int": 2**53 - 1, "neg": -0.0},
        {"blob": "λ" * 1_000_000},
    ]
    changes = [Change(f"k{i}", "upsert", record=record) for i, record in enumerate(fields)]

    # When they are written
    outcomes = webhook(receiver.url).write(changes)

    # Then the receiver got exactly the bytes an independent serialisation gives, signature intact
    expected = {
        "sync": SYNC,
        "records": [{"key": c.key, "action": "upsert", "fields": c.record} for c in changes],
    }
    expected_bytes = json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert receiver.raw_bodies == [expected_bytes]
    assert receiver.received == [expected]
    assert "λλλ".encode() in receiver.raw_bodies[0]  # UTF-8, not \u escapes
    assert all(o.status == "delivered" for o in outcomes)


FAULTS: list[tuple[int, dict[str, str] | None, type[SyncbackError]]] = [
    (400, None, RequestRejected),
    (422, None, RequestRejected),
    (401, None, DestinationAuthError),
    (500, None, DestinationUnavailable),
    (429, None, RateLimited),
    (410, None, PermanentError),
    (302, {"Location": "https://example.com/?email=" + PRIVATE["email"]}, SystemicError),
]


@pytest.mark.parametrize(("status", "headers", "error"), FAULTS)
def test_no_record_value_or_secret_appears_in_an_error_message(
    receiver: WebhookReceiver, status: int, headers: dict[str, str] | None, error: type[SyncbackError]
) -> None:
    # Given a receiver that echoes our record values and the secret in its error body
    echo = json.dumps({"error": "invalid", "got": PRIVATE, "sig": SECRET}, ensure_ascii=False).encode()
    receiver.fail_next(status, headers=headers, body=echo + b" " + json.dumps(PRIVATE).encode())

    # When a batch is written
    with pytest.raises(error) as raised:
        webhook(receiver.url).write(upserts("a"))

    # Then the message names the status but none of the values, in any escaping, nor the secret
    message = str(raised.value)
    assert str(status) in message
    assert_no_private_value(message)
    assert SECRET.removeprefix("whsec_") not in message


def test_transport_failures_carry_no_value_or_url_token() -> None:
    # Given a URL with a token in its query, on a port nothing listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # When a batch is written
    with pytest.raises(DestinationUnavailable) as raised:
        webhook(f"http://127.0.0.1:{port}/hooks?token=tok-123").write(upserts("a"))

    # Then the message names the host only
    assert "127.0.0.1" in str(raised.value)
    assert "tok-123" not in str(raised.value)
    assert_no_private_value(str(raised.value))


def assert_no_private_value(text: str) -> None:
    for value in PRIVATE.values():
        assert value not in text
        assert json.dumps(value)[1:-1] not in text
