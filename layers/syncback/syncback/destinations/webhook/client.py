"""Any HTTP endpoint: one JSON POST per batch, optionally signed the Standard Webhooks way.

The request body is ``{"sync": ..., "records": [{"key", "action", "fields"?, "destination_id"?}]}``
(an archive carries no fields). Our receiver contract for partial failures: a 2xx whose JSON body
holds ``"rejected": [{"key": ..., "reason": ...}]`` rejects those keys; every other record of a 2xx
was delivered.

Signing (https://www.standardwebhooks.com): each request carries ``webhook-id`` (derived from the
delivery: the sync, the run, the batch and the records' keys; the same on every retry of it, and
different in every other run, so a receiver that drops repeated ids drops only real repeats),
``webhook-timestamp`` (unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
``"{id}.{timestamp}.{body}"``. The secret is what the spec says it is: base64, optionally after a
``whsec_`` prefix; the key is the decoded bytes.

Status handling follows the spec: 2xx success, 3xx failure (redirects are not followed), 410 means
stop sending. Reasons and error messages never carry record values or the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import requests

from syncback.destinations.base import Change, Outcome
from syncback.destinations.http import (
    json_body,
    not_json_reason,
    redact,
    retry_after,
    send,
    strict_json,
    url_label,
)
from syncback.destinations.webhook import WebhookDestinationConfig
from syncback.errors import (
    DestinationAuthError,
    DestinationGone,
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SecretError,
    SystemicError,
)

SECRET_PREFIX = "whsec_"
EXCERPT_CHARS = 200
REASON_CHARS = 500
#: values shorter than this are not redacted from receiver text: too common to mean anything
_SPACES = re.compile(r"\s+")


def signing_key(secret: str) -> bytes:
    """Return the HMAC key of a Standard Webhooks secret: base64 (after an optional ``whsec_``), decoded.

    Exactly what receivers using the ``standardwebhooks`` library decode, so they verify every
    request; a secret that is not valid base64 is refused, since a receiver would read another key.
    """
    encoded = secret.removeprefix(SECRET_PREFIX).strip()
    fix = "generate one with: python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(24)).decode())\""
    if not encoded:
        raise SecretError(f"the webhook signing secret is empty; {fix}")
    try:
        # senders often drop base64 padding; add it back like the reference library does
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):  # ValueError: characters base64 never holds
        raise SecretError(
            "the webhook signing secret is not base64 (optionally after whsec_), as Standard Webhooks "
            f"requires; receivers would verify with another key. Give the secret your receiver uses, or {fix}"
        ) from None
    if not key:
        raise SecretError(f"the webhook signing secret holds no key; {fix}")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` value ``v1,<base64 HMAC-SHA256>`` of one request."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def message_id(scope: str, changes: Sequence[Change]) -> str:
    """Return the ``webhook-id`` of one delivery: the same for every retry of it, so receivers drop
    repeats, and different in every other delivery, even of byte-identical bodies.

    ``scope`` names the run's batch (or the replay); the keys and actions name the slice of it, so
    the halves of a split request get ids of their own. A value that goes B → A → B is three
    deliveries with three ids, never a repeat.
    """
    digest = hashlib.sha256(scope.encode())
    for change in changes:
        digest.update(f"\x00{change.action}\x00{change.key}".encode())
    return "msg_" + digest.hexdigest()[:32]


class WebhookDestination:
    """POSTs one sync's batches to one HTTP endpoint."""

    def __init__(
        self,
        config: WebhookDestinationConfig,
        secret: str | None,
        sync: str,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[str, Sequence[Change]], str] | None = None,
    ) -> None:
        self.config = config
        self.sync = sync
        self.max_batch_size = config.batch_size
        self._key = None if secret is None else signing_key(secret)
        # never echoed back by an honest receiver, but a message must not carry it even if one does
        self._secret_forms = () if not secret else (secret, secret.removeprefix(SECRET_PREFIX))
        self._session = session or requests.Session()
        self._clock = clock
        self._new_id = new_id or message_id
        # scheme and host name the receiver in messages: a URL's path or query may carry a token
        self._label = url_label(config.url)

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        if len(changes) > self.max_batch_size:
            raise ValueError(f"{len(changes)} records; this webhook takes {self.max_batch_size} a request")
        settled = {
            i: Outcome(c.key, "skipped", reason=f"action {c.action}: nothing is sent")
            for i, c in enumerate(changes)
            if c.action not in ("upsert", "archive")  # nothing else reaches a webhook
        }
        try:
            body = self._body([c for i, c in enumerate(changes) if i not in settled])
        except ValueError:
            # the mapping keeps NaN and the like out; if one slips through, only its record fails
            settled |= {
                i: Outcome(c.key, "rejected", reason=not_json_reason(c, "the key or destination id"))
                for i, c in enumerate(changes)
                if i not in settled and not _serialises(c)
            }
            body = self._body([c for i, c in enumerate(changes) if i not in settled])
        to_send = [c for i, c in enumerate(changes) if i not in settled]
        sent = iter(
            self._outcomes_or_raise(self._post(body, self._new_id(scope, to_send)), to_send)
            if to_send
            else ()
        )
        return [settled[i] if i in settled else next(sent) for i in range(len(changes))]

    def close(self) -> None:
        self._session.close()

    # ---- requests ----------------------------------------------------------------------

    def _body(self, changes: Sequence[Change]) -> bytes:
        return strict_json({"sync": self.sync, "records": [_record(c) for c in changes]})

    def _post(self, body: bytes, msg_id: str) -> requests.Response:
        # the id goes on every request, signed or not: receivers use it to drop repeats
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, timestamp, body)
        return send(
            self._session,
            "POST",
            self.config.url,
            f"webhook {self._label}",
            "destination.url",
            self.config.timeout_s,
            data=body,
            headers=headers,
        )

    # ---- responses: classified here and nowhere else -------------------------------------------

    def _outcomes_or_raise(self, response: requests.Response, changes: Sequence[Change]) -> list[Outcome]:
        """Return one outcome per change for a 2xx; raise the error any other answer means."""
        status = response.status_code
        if 200 <= status < 300:
            return _delivered_or_rejected(response, changes)
        said = f"webhook {self._label} answered {status}"
        excerpt = redact(_excerpt(response), changes, self._secret_forms)
        wait = retry_after(response, self._clock)
        if status in (401, 403):
            raise DestinationAuthError(f"{said}: {excerpt}. check the signing secret")
        if status in (408, 425, 429):
            raise RateLimited(f"{said}: the receiver asked us to slow down", wait)
        if status >= 500:
            raise DestinationUnavailable(f"{said}: {excerpt}", wait)
        if status == 410:
            raise DestinationGone(f"{said} Gone: the receiver asked us to stop; fix or remove this sync")
        if 300 <= status < 400:
            location = (
                url_label(response.headers.get("Location", ""))
                if response.headers.get("Location")
                else "nowhere"
            )
            raise SystemicError(
                f"{said} (a redirect to {location}): redirects are not followed; set the final URL",
                "destination.url",
            )
        if status in (404, 405):
            raise SystemicError(f"{said}: no receiver takes POST there; check the URL", "destination.url")
        if status == 413:
            raise RequestRejected(f"{said}: the request is larger than the receiver takes")
        raise RequestRejected(f"{said}: {excerpt}")


def _record(change: Change) -> dict[str, Any]:
    record: dict[str, Any] = {"key": change.key, "action": change.action}
    if change.action != "archive":
        record["fields"] = change.record
    if change.destination_id is not None:
        record["destination_id"] = change.destination_id
    return record


def _serialises(change: Change) -> bool:
    try:
        strict_json(_record(change))
    except ValueError:
        return False
    return True


def _delivered_or_rejected(response: requests.Response, changes: Sequence[Change]) -> list[Outcome]:
    by_key = {c.key: c for c in changes}
    reasons: dict[str, str] = {}
    body = json_body(response)
    rejected = body.get("rejected") if isinstance(body, dict) else None
    for item in rejected if isinstance(rejected, list) else []:
        if isinstance(item, dict) and str(item.get("key")) in by_key:
            key = str(item["key"])
            reason = str(item.get("reason") or "the receiver rejected this record")[:REASON_CHARS]
            reasons[key] = redact(reason, [by_key[key]])
    return [
        Outcome(c.key, "rejected", reason=reasons[c.key])
        if c.key in reasons
        else Outcome(c.key, "delivered", c.destination_id or c.key, created=True)
        for c in changes
    ]


def _excerpt(response: requests.Response) -> str:
    text = response.content[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    return _SPACES.sub(" ", text).strip()[:EXCERPT_CHARS] or "(empty body)"
