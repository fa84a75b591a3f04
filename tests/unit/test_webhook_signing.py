"""The webhook destination's request: Standard Webhooks signature, headers and body, no network."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import math
import os
import time
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from syncback.destinations.base import Change
from syncback.destinations.webhook import WebhookDestinationConfig
from syncback.destinations.webhook.client import WebhookDestination, sign, signing_key
from syncback.errors import DestinationUnavailable, RateLimited, SecretError

KEY_BYTES = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY_BYTES).decode()
NOW = 1_700_000_000.75


class Transport(HTTPAdapter):
    """Answers every request with one canned response and keeps the prepared requests."""

    def __init__(self, status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.status, self.body, self.headers = status, body, headers or {}
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        response = requests.Response()
        response.status_code = self.status
        response._content = self.body
        response.headers = CaseInsensitiveDict(self.headers)
        response.request, response.url = request, request.url or ""
        return response


def destination(transport: Transport, secret: str | None = SECRET) -> WebhookDestination:
    session = requests.Session()
    session.mount("https://", transport)
    config = WebhookDestinationConfig.model_validate(
        {"type": "webhook", "url": "https://hooks.example.com/in?token=t0k"}
    )
    return WebhookDestination(
        config, secret, "crm_contacts", session, clock=lambda: NOW, new_id=lambda scope, changes: "msg_1"
    )


def test_sign_matches_an_hmac_computed_independently() -> None:
    # Given a fixed key, id, timestamp and body
    body = '{"sync":"s","records":[{"key":"k1","action":"upsert","fields":{"name":"Zoë"}}]}'.encode()
    expected = base64.b64encode(
        hmac.new(KEY_BYTES, b"msg_2KWPBgLlAfxdpx2AI54pPJ85f4W.1674087231." + body, hashlib.sha256).digest()
    ).decode()

    # When syncback signs them
    signature = sign(signing_key(SECRET), "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1674087231, body)

    # Then it is v1, then the base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"
    assert signature == f"v1,{expected}"


def test_sign_matches_the_reference_librarys_published_vector() -> None:
    # Given the vector from standard-webhooks' Python library tests (test_sign_function)
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")

    # When signed
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')

    # Then it is the published value
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_secret_without_the_prefix_is_base64_as_the_spec_says() -> None:
    # Given the same key with and without the optional whsec_ prefix
    # When its key is derived: Then both decode to the same bytes, as the reference library does
    assert signing_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == signing_key(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    )
    assert signing_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == base64.b64decode(
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    )


@pytest.mark.parametrize("secret", ["plain-sécret", "has spaces in it", "whsec_abc$"])
def test_a_secret_that_is_not_base64_is_refused_with_the_fix(secret: str) -> None:
    with pytest.raises(SecretError, match="not base64.*generate one"):
        signing_key(secret)


def test_a_whsec_secret_without_base64_padding_still_decodes() -> None:
    # Given a 31-byte key whose base64 would end in "="
    raw = bytes(range(31))
    unpadded = base64.b64encode(raw).decode().rstrip("=")

    # When its key is derived, Then the padding is restored
    assert signing_key("whsec_" + unpadded) == raw


@pytest.mark.parametrize("secret", ["whsec_not*base64!", "whsec_", ""])
def test_an_unusable_secret_is_a_secret_error_that_does_not_quote_it(secret: str) -> None:
    # Given a secret that holds no key
    # When the destination is built
    with pytest.raises(SecretError) as raised:
        destination(Transport(), secret)

    # Then the message says why without repeating the secret's body
    assert secret.removeprefix("whsec_") == "" or secret.removeprefix("whsec_") not in str(raised.value)


def test_write_signs_the_exact_bytes_it_sends() -> None:
    # Given a destination with a fixed clock and id
    transport = Transport()
    changes = [
        Change("k1", "upsert", record={"email": "zoë@example.com", "n": 1, "tags": ["a", None]}),
        Change("k2", "archive", record={"email": "gone@example.com"}, destination_id="d-2"),
        Change("k3", "upsert", record={"email": "c@example.com"}, destination_id="d-3"),
    ]

    # When it writes
    outcomes = destination(transport).write(changes)

    # Then the body is compact UTF-8 JSON (archives carry no fields)
    sent = transport.sent[0]
    expected_body = (
        '{"sync":"crm_contacts","records":['
        '{"key":"k1","action":"upsert","fields":{"email":"zoë@example.com","n":1,"tags":["a",null]}},'
        '{"key":"k2","action":"archive","destination_id":"d-2"},'
        '{"key":"k3","action":"upsert","fields":{"email":"c@example.com"},"destination_id":"d-3"}]}'
    ).encode()
    assert sent.body == expected_body
    # And the headers sign exactly those bytes with the injected id and the clock's whole seconds
    assert sent.method == "POST"
    assert sent.url == "https://hooks.example.com/in?token=t0k"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["webhook-id"] == "msg_1"
    assert sent.headers["webhook-timestamp"] == "1700000000"
    mac = hmac.new(KEY_BYTES, b"msg_1.1700000000." + expected_body, hashlib.sha256).digest()
    assert sent.headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    # And a 2xx with an empty body delivers every record under its destination id, else its key
    assert [(o.key, o.status, o.destination_id) for o in outcomes] == [
        ("k1", "delivered", "k1"),
        ("k2", "delivered", "d-2"),
        ("k3", "delivered", "d-3"),
    ]


def test_without_a_secret_requests_carry_an_id_but_no_signature() -> None:
    # Given a destination with no secret
    transport = Transport(status=204)

    # When it writes
    destination(transport, secret=None).write([Change("k1", "upsert", record={"a": 1})])

    # Then the id (for the receiver to drop repeats) is sent, and no signature
    sent = {name.lower() for name in transport.sent[0].headers if name.lower().startswith("webhook-")}
    assert sent == {"webhook-id", "webhook-timestamp"}


def test_a_value_json_cannot_carry_rejects_only_its_record() -> None:
    # Given records where one holds NaN and one a lone surrogate (the mapping should stop both)
    transport = Transport(body=json.dumps({"rejected": []}).encode())
    changes = [
        Change("ok1", "upsert", record={"score": 1.5}),
        Change("nan", "upsert", record={"score": math.nan, "name": "fine-sentinel"}),
        Change("sur", "upsert", record={"name": "bad-sentinel\ud800"}),
        Change("ok2", "archive", destination_id="d-9"),
    ]

    # When they are written
    outcomes = destination(transport).write(changes)

    # Then those two are rejected, naming the field and not the value, in the input's order
    assert [(o.key, o.status) for o in outcomes] == [
        ("ok1", "delivered"),
        ("nan", "rejected"),
        ("sur", "rejected"),
        ("ok2", "delivered"),
    ]
    assert str(outcomes[1].reason).startswith("not valid JSON: score holds")
    assert str(outcomes[2].reason).startswith("not valid JSON: name holds")
    assert "sentinel" not in str(outcomes[1].reason) + str(outcomes[2].reason)
    # And the other records still go out, in one request
    assert len(transport.sent) == 1
    assert [r["key"] for r in json.loads(transport.sent[0].body or b"")["records"]] == ["ok1", "ok2"]


def test_forget_and_keep_are_skipped_without_a_request() -> None:
    # Given only changes that send nothing
    transport = Transport()

    # When they are written
    outcomes = destination(transport).write([Change("a", "forget"), Change("b", "keep")])

    # Then each is skipped and nothing is sent
    assert [o.status for o in outcomes] == ["skipped", "skipped"]
    assert transport.sent == []


def test_retry_after_as_an_http_date_is_measured_from_the_injected_clock() -> None:
    # Given a 429 whose Retry-After is an HTTP date 90 s after the clock
    when = email.utils.formatdate(NOW + 90.25, usegmt=True)
    transport = Transport(status=429, headers={"Retry-After": when})

    # When a write meets it
    with pytest.raises(RateLimited) as raised:
        destination(transport).write([Change("k1", "upsert", record={"a": 1})])

    # Then retry_after counts from the clock (HTTP dates are whole seconds)
    assert raised.value.retry_after == pytest.approx(90.25)


def test_an_http_date_without_a_zone_is_read_as_gmt_whatever_the_local_zone() -> None:
    # Given a machine in New York and a Retry-After date written with "-0000" (no zone: GMT by RFC)
    when = email.utils.formatdate(NOW + 90.25)
    assert when.endswith("-0000")
    transport = Transport(status=503, headers={"Retry-After": when})
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        # When a write meets it
        with pytest.raises(DestinationUnavailable) as raised:
            destination(transport).write([Change("k1", "upsert", record={"a": 1})])
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()

    # Then the wait is not shifted by the local zone's offset
    assert raised.value.retry_after == pytest.approx(90.25)
