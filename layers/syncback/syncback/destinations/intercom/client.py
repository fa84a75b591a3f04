"""Intercom contacts: one request a record, since Intercom has no batch write for contacts.

- An upsert with an Intercom id is ``PUT /contacts/{id}``; a 404 there means someone deleted the
  contact: the outcome is ``gone``, and the delivery writes the record again by its identifier.
- An upsert without one is ``POST /contacts`` (with the spec's ``role``): a 200 returns the new
  contact, which this sync created. A 409 means a contact with that external_id or e-mail exists:
  its id is read from the error ("... already exists with id=<id>"), or, when the message holds
  none, searched for (``POST /contacts/search`` on the identifier; the search index may lag behind
  a new contact by minutes, so finding nothing is transient), and the contact is updated by it.
- A clear or a release is a ``PUT`` of the emptied fields (null removes a value); an archive is
  ``POST /contacts/{id}/archive`` or ``DELETE /contacts/{id}``, as the spec's ``removal`` says.
- Every answer may carry ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (epoch seconds): a
  429, or an answer saying nothing remains, holds this client's next request until the reset.

``max_batch_size`` is 1: the delivery takes one slot of the shared rate budget for each ``write``,
so one record a call keeps the budget counting requests (a 409 costs one or two more); requests
run concurrently across the batches delivered side by side (``concurrency``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import requests

from syncback.destinations.base import Change, Outcome
from syncback.destinations.http import AnnouncedReset, json_body, not_json_reason, redact, send, strict_json
from syncback.destinations.intercom import CUSTOM, IntercomDestinationConfig
from syncback.errors import (
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    SystemicError,
)

REASON_CHARS = 500
#: "A contact matching those details already exists with id=5da6f18e..."
_EXISTING_ID = re.compile(r"\bid=([0-9A-Za-z_-]+)")


class IntercomDestination:
    """Writes one sync's records to Intercom contacts, one request each."""

    max_batch_size = 1

    def __init__(
        self,
        config: IntercomDestinationConfig,
        token: str,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._token = token
        self._session = session or requests.Session()
        self._session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Intercom-Version": config.api_version,
                "Accept": "application/json",
                "Content-Type": "application/json",
            }
        )
        self._reset = AnnouncedReset(clock)

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        return [self._one(change) for change in changes]

    def close(self) -> None:
        self._session.close()

    # ---- one record ------------------------------------------------------------------------------

    def _one(self, change: Change) -> Outcome:
        if change.action == "archive":
            return self._archive(change)
        if change.action in ("clear", "release"):
            if not change.destination_id:
                return Outcome(change.key, "skipped", reason="no Intercom id was recorded for this contact")
            return self._update(change, change.destination_id, _contact(change.record, keep_nulls=True))
        try:
            strict_json(_contact(change.record, keep_nulls=True))
        except ValueError:
            return Outcome(change.key, "rejected", reason=not_json_reason(change))
        if change.destination_id:
            return self._update(change, change.destination_id, _contact(change.record, keep_nulls=True))
        return self._create(change)

    def _create(self, change: Change) -> Outcome:
        """Create the contact; where Intercom has one with its identifier, update that one."""
        identifier = change.record.get(self.config.identify_by)
        if identifier is None or str(identifier).strip() == "":
            return Outcome(
                change.key, "rejected", reason=f"no {self.config.identify_by}: Intercom finds contacts by it"
            )
        # a new contact has nothing to empty: Intercom may refuse a null where it expects a value
        body = {"role": self.config.role, **_contact(change.record, keep_nulls=False)}
        response = self._request("POST", "contacts", body, change)
        if response.status_code == 409:
            existing = self._existing(response, change, str(identifier))
            return self._update(change, existing, _contact(change.record, keep_nulls=True), created=False)
        if response.status_code >= 400:
            return self._rejected(response, change)
        contact_id = _contact_id(response)
        if contact_id is None:
            raise DestinationUnavailable("Intercom contacts answered a create without the contact's id")
        return Outcome(change.key, "delivered", contact_id, created=True)

    def _update(
        self, change: Change, contact_id: str, body: dict[str, Any], created: bool | None = None
    ) -> Outcome:
        response = self._request("PUT", f"contacts/{contact_id}", body, change)
        if response.status_code == 404:
            return Outcome(change.key, "gone", reason="the Intercom contact was deleted")
        if response.status_code >= 400:
            return self._rejected(response, change)
        return Outcome(change.key, "delivered", _contact_id(response) or contact_id, created=created)

    def _archive(self, change: Change) -> Outcome:
        if not change.destination_id:
            return Outcome(change.key, "skipped", reason="no Intercom id was recorded for this contact")
        if self.config.removal == "delete":
            response = self._request("DELETE", f"contacts/{change.destination_id}", None, change)
        else:
            response = self._request("POST", f"contacts/{change.destination_id}/archive", None, change)
        # a contact Intercom does not know is no error: it is gone either way
        if response.status_code >= 400 and response.status_code != 404:
            return self._rejected(response, change)
        return Outcome(change.key, "delivered", change.destination_id, created=False)

    def _existing(self, conflict: requests.Response, change: Change, identifier: str) -> str:
        """Return the id of the contact a 409 says holds the identifier already."""
        for error in _errors(conflict):
            found = _EXISTING_ID.search(str(error.get("message", "")))
            if found:
                return found.group(1)
        query = {"query": {"field": self.config.identify_by, "operator": "=", "value": identifier}}
        response = self._request("POST", "contacts/search", query, change)
        if response.status_code >= 400:
            raise DestinationUnavailable(
                f"Intercom contacts/search answered {response.status_code} while resolving a 409"
            )
        body = json_body(response)
        data = body.get("data") if isinstance(body, dict) else None
        for contact in data if isinstance(data, list) else []:
            if isinstance(contact, dict) and contact.get("id"):
                return str(contact["id"])
        # the search index lags behind new contacts by up to minutes: a later attempt finds it
        raise DestinationUnavailable(
            f"Intercom says a contact with this {self.config.identify_by} exists, and search finds none yet"
        )

    # ---- requests: classified here and nowhere else ----------------------------------------------

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, change: Change
    ) -> requests.Response:
        """Return Intercom's answer when it concerns the record (2xx, 400, 404, 409, 422); raise
        the error any other answer means."""
        self._reset.hold("Intercom")
        who = f"Intercom {path.split('/')[0]}"
        response = send(
            self._session,
            method,
            f"{self.config.url}/{path}",
            who,
            "destination.base_url" if self.config.base_url else "destination.region",
            self.config.timeout_s,
            data=None if body is None else strict_json(body),
        )
        self._reset.note(response)
        self._raise_for_request(who, method, path, response, change)
        return response

    def _raise_for_request(
        self, who: str, method: str, path: str, response: requests.Response, change: Change
    ) -> None:
        status = response.status_code
        if 200 <= status < 300 or status in (400, 409, 422):
            return
        said = f"{who} answered {status}"
        message = _message(response, [change], self._token)
        if status == 401:
            raise DestinationAuthError(
                f"{said}: {message or 'unauthorized'}. The access token is not valid for this workspace: "
                "check destination.access_token, and destination.region (a token works in its region only)"
            )
        if status == 403:
            raise DestinationAuthError(
                f"{said}: {message or 'forbidden'}. Give the app the 'Read and write users' permission "
                "(Developer Hub > your app > Authentication), then install it again"
            )
        if status == 429:
            raise RateLimited(f"{said}: rate limit reached", self._reset.wait(response))
        if status >= 500:
            raise DestinationUnavailable(f"{said}: {message}")
        if status == 404 and _not_found(response) and (method != "POST" or path != "contacts"):
            return  # the contact named by id: the caller decides what that means
        raise SystemicError(
            f"{said}: no Intercom {path.split('/')[0]} endpoint at this address ({message or 'no message'}); "
            "check destination.region and destination.base_url, and destination.api_version",
            "destination.base_url" if self.config.base_url else "destination.region",
        )

    def _rejected(self, response: requests.Response, change: Change) -> Outcome:
        reason = _message(response, [change], self._token) or f"answered {response.status_code}"
        return Outcome(change.key, "rejected", reason=f"Intercom: {reason}"[:REASON_CHARS])


def _contact(record: dict[str, Any], keep_nulls: bool) -> dict[str, Any]:
    """Return the contact object that writes ``record``: custom attributes nested, the external_id
    a string (Intercom's type for it)."""
    contact: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    for name, value in record.items():
        if value is None and not keep_nulls:
            continue
        if name.startswith(CUSTOM):
            custom[name.removeprefix(CUSTOM)] = value
        elif name == "external_id" and value is not None:
            contact[name] = str(value)
        else:
            contact[name] = value
    if custom:
        contact["custom_attributes"] = custom
    return contact


def _errors(response: requests.Response) -> list[dict[str, Any]]:
    """Return the ``errors`` of an ``error.list`` answer."""
    body = json_body(response)
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _not_found(response: requests.Response) -> bool:
    """Whether a 404 is Intercom's ``not_found`` for a record (not a wrong address)."""
    return any(e.get("code") == "not_found" for e in _errors(response))


def _contact_id(response: requests.Response) -> str | None:
    body = json_body(response)
    found = body.get("id") if isinstance(body, dict) else None
    return str(found) if found else None


def _message(response: requests.Response, sent: Sequence[Change], token: str) -> str:
    parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in _errors(response)[:3]]
    return redact("; ".join(p for p in parts if p), sent, [token])[:300]
