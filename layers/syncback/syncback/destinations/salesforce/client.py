"""Salesforce through sObject Collections: at most 200 records a request, ``allOrNone: false``.

- written by identifier: ``PATCH /services/data/vXX.X/composite/sobjects/{Object}/{ExternalIdField}``
  (upsert: found by the external ID, else created);
- written by the Salesforce id this sync recorded (an identifier that changed, fields to clear):
  ``PATCH /services/data/vXX.X/composite/sobjects`` with each record's ``id``;
- removed (mirror): ``DELETE /services/data/vXX.X/composite/sobjects?ids=...&allOrNone=false``.

Each answers 200 with one result per record, in request order: ``{id, success, created, errors:
[{statusCode, message, fields}]}``. The access token and instance URL come from the OAuth token
endpoint (client credentials, or a JWT bearer assertion signed with the app's key), are cached per
app for the process, and are asked for again once when Salesforce says ``INVALID_SESSION_ID``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import requests

from syncback.destinations.base import Change, Outcome
from syncback.destinations.http import json_body, redact, send
from syncback.destinations.salesforce import SalesforceDestinationConfig
from syncback.errors import (
    DestinationAuthError,
    DestinationUnavailable,
    RequestRejected,
    SecretError,
    SystemicError,
)

MAX_RECORDS = 200
#: per-record errors that pass: the record is sent again (twice more here, then by the next run)
_TRANSIENT = {"UNABLE_TO_LOCK_ROW"}
LOCK_RETRIES, LOCK_WAIT_S = 2, 0.5
_TOKENS: dict[tuple[str, str, str], tuple[str, str]] = {}  # (login url, client id, user) -> (token, instance)
_TOKENS_LOCK = threading.Lock()


def load_private_key(pem: str) -> Any:
    """Return the RSA private key a PEM holds; raise SecretError saying what is wrong."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise SecretError(
            "destination.private_key is not an unencrypted PEM private key (-----BEGIN PRIVATE KEY-----); "
            "store the key of the certificate uploaded to the connected app"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SecretError("destination.private_key must be an RSA key: Salesforce signs JWTs with RS256")
    return key


class Credentials:
    """Gets, caches and renews the access token and instance URL of one connected app."""

    def __init__(self, config: SalesforceDestinationConfig, secret: str) -> None:
        self.config = config
        self._secret = secret
        self._key = (config.login_url, config.client_id, config.username or "")

    def current(self, session: requests.Session, renew: bool = False) -> tuple[str, str]:
        """Return (access token, instance URL), asking for a new token when ``renew`` or none is cached."""
        with _TOKENS_LOCK:
            if renew or self._key not in _TOKENS:
                _TOKENS[self._key] = self._ask(session)
            return _TOKENS[self._key]

    def _ask(self, session: requests.Session) -> tuple[str, str]:
        config = self.config
        if config.auth == "client_credentials":
            form = {
                "grant_type": "client_credentials",
                "client_id": config.client_id,
                "client_secret": self._secret,
            }
        else:
            form = {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": self.assertion(),
            }
        url = f"{config.login_url.rstrip('/')}/services/oauth2/token"
        response = send(
            session, "POST", url, "Salesforce token", "destination.login_url", config.timeout_s, data=form
        )
        body = _json(response)
        if response.status_code >= 500:
            raise DestinationUnavailable(f"Salesforce's token endpoint answered {response.status_code}")
        if response.status_code != 200 or "access_token" not in body or "instance_url" not in body:
            why = redact(f"{body.get('error', '')}: {body.get('error_description', '')}", [], [self._secret])
            raise DestinationAuthError(
                f"Salesforce refused a token ({response.status_code} {why[:200]}); check destination.client_id, "
                f"the {'consumer secret' if config.auth == 'client_credentials' else 'private key, username'} "
                "and that the connected app allows this flow"
            )
        return str(body["access_token"]), str(body["instance_url"]).rstrip("/")

    def assertion(self, now: float | None = None) -> str:
        """Return the RS256 JWT of the JWT bearer flow: iss the app, sub the user, aud the login URL."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        key = load_private_key(self._secret)
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self.config.client_id,
            "sub": self.config.username,
            "aud": self.config.login_url.rstrip("/"),
            "exp": issued + 180,
        }
        signing_input = f"{_b64(json.dumps({'alg': 'RS256'}))}.{_b64(json.dumps(claims))}"
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"


class OrgClient:
    """One org's REST API for one sync: the token it needs, and what its answers mean."""

    def __init__(
        self,
        config: SalesforceDestinationConfig,
        credentials: Credentials,
        session: requests.Session | None = None,
        sleep: Any = time.sleep,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self._session = session or requests.Session()
        self._sleep = sleep

    def close(self) -> None:
        self._session.close()

    def request(self, method: str, path: str, changes: Sequence[Change], **kwargs: Any) -> requests.Response:
        """Send with the cached token; on INVALID_SESSION_ID renew it once and send again."""
        who = f"Salesforce {self.config.object}"
        extra = kwargs.pop("headers", {})
        for renew in (False, True):
            token, instance = self.credentials.current(self._session, renew=renew)
            headers = {**extra, "Authorization": f"Bearer {token}"}
            response = send(
                self._session, method, instance + path, who, "destination.login_url", self.config.timeout_s,
                headers=headers, **kwargs,
            )  # fmt: skip
            if response.status_code != 401:
                break
        self.raise_for_request(response, changes)
        return response

    # ---- answers: classified here and nowhere else --------------------------------------------

    def raise_for_request(self, response: requests.Response, sent: Sequence[Change]) -> None:
        status = response.status_code
        if status < 300:
            return
        errors = json_body(response)
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        code = str(first.get("errorCode", ""))
        message = redact(str(first.get("message", "")), sent)[:300]
        said = f"Salesforce answered {status} {code}: {message}".rstrip(": ")
        if status == 401:
            raise DestinationAuthError(
                f"{said}; a renewed token was refused too: check the connected app's access"
            )
        if code == "REQUEST_LIMIT_EXCEEDED":
            usage = response.headers.get("Sforce-Limit-Info", "usage unknown")
            raise SystemicError(
                f"{said} ({usage}): the org's API requests are used up; the run stops rather than retry. "
                "Wait for the rolling 24 hours to free requests, or raise the org's limit",
                "destination",
            )
        if status == 403:
            raise DestinationAuthError(f"{said}; check the user's permissions on {self.config.object}")
        if status >= 500:
            raise DestinationUnavailable(said)
        if code in ("NOT_FOUND", "INVALID_TYPE") or status in (404, 405) or 300 < status < 400:
            raise SystemicError(
                f"{said}; check destination.object and destination.login_url", "destination.object"
            )
        if code == "INVALID_FIELD":
            field = self.config.external_id_field if self.config.external_id_field in message else None
            raise SystemicError(
                f"{said}; create the field on {self.config.object} or map another one",
                "destination.external_id_field" if field else "mapping",
            )
        raise RequestRejected(said)


class SalesforceDestination(OrgClient):
    """Writes one sync's records to one Salesforce object, 200 a request."""

    max_batch_size = MAX_RECORDS

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        if not changes:
            return []
        if len(changes) > MAX_RECORDS:
            raise ValueError(f"Salesforce takes at most {MAX_RECORDS} records a request, got {len(changes)}")
        first = changes[0]
        if first.destination_id is None and first.action != "upsert":
            return [
                Outcome(c.key, "skipped", reason="no Salesforce id was recorded for this record")
                for c in changes
            ]
        outcomes: dict[str, Outcome] = {}
        todo = list(changes)
        for attempt in range(LOCK_RETRIES + 1):
            locked = []
            for change, outcome in zip(todo, self._send(todo), strict=True):
                if outcome is None:
                    locked.append(change)
                else:
                    outcomes[change.key] = outcome
            if not locked:
                break
            todo = locked
            if attempt < LOCK_RETRIES:
                self._sleep(LOCK_WAIT_S * (attempt + 1))
        for change in todo if locked else []:
            outcomes[change.key] = Outcome(
                change.key,
                "undelivered",
                reason="UNABLE_TO_LOCK_ROW: the record stayed locked; the next run sends it",
            )
        return [outcomes[c.key] for c in changes]

    # ---- requests ------------------------------------------------------------------------------

    def _send(self, changes: Sequence[Change]) -> list[Outcome | None]:
        """Send one request; return an outcome per change, None for a record to send again (locked)."""
        config = self.config
        path = f"/services/data/v{config.api_version}/composite/sobjects"
        first = changes[0]
        if first.action == "archive":
            ids = ",".join(str(c.destination_id) for c in changes)
            response = self.request("DELETE", path, changes, params={"ids": ids, "allOrNone": "false"})
        elif first.destination_id is not None:
            records = [
                {"attributes": {"type": config.object}, **c.record, "id": c.destination_id} for c in changes
            ]
            response = self.request("PATCH", path, changes, json={"allOrNone": False, "records": records})
        else:
            records = [{"attributes": {"type": config.object}, **c.record} for c in changes]
            response = self.request(
                "PATCH",
                f"{path}/{config.object}/{config.external_id_field}",
                changes,
                json={"allOrNone": False, "records": records},
            )
        results = json_body(response)
        if not isinstance(results, list):
            raise DestinationUnavailable("Salesforce answered 200 without a result per record")
        return [self._outcome(c, results[i] if i < len(results) else None) for i, c in enumerate(changes)]

    def _outcome(self, change: Change, result: Any) -> Outcome | None:
        if not isinstance(result, dict):
            return Outcome(change.key, "rejected", reason="Salesforce did not answer for this record")
        if result.get("success"):
            record_id = result.get("id") or change.destination_id
            created = result.get("created") if isinstance(result.get("created"), bool) else False
            return Outcome(change.key, "delivered", str(record_id), created=created)
        errors = [e for e in result.get("errors") or [] if isinstance(e, dict)]
        codes = {str(e.get("statusCode", "")) for e in errors}
        if codes and codes <= _TRANSIENT:
            return None
        if "ENTITY_IS_DELETED" in codes and change.action == "archive":
            return Outcome(change.key, "delivered", change.destination_id, created=False)
        if "ENTITY_IS_DELETED" in codes and change.destination_id is not None:
            # deleted in Salesforce since: the delivery writes it again by its external ID
            return Outcome(change.key, "gone", reason="ENTITY_IS_DELETED: deleted in Salesforce")
        reason = "; ".join(
            f"{e.get('statusCode', 'ERROR')}: {e.get('message', '')}"
            + (f" ({', '.join(map(str, e['fields']))})" if e.get("fields") else "")
            for e in errors
        )
        return Outcome(
            change.key, "rejected", reason=redact(reason or "failed without a reason", [change])[:500]
        )


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _json(response: requests.Response) -> dict[str, Any]:
    body = json_body(response)
    return body if isinstance(body, dict) else {}
