"""Braze user attributes: ``POST /users/track`` with ``{"attributes": [...]}``, at most 75 objects a
request (``batch_size``), each naming its user by ``external_id``; removal by ``POST /users/delete``.

- A write sets the mapped attributes of the user with that external_id, and creates the user when
  Braze has none. Braze answers no id and does not say whether it created the user: the external_id
  is the destination id, and ``created`` is left unknown.
- A clear (mirror, ``removal: clear``) sets the mapped attributes to null, which removes them from
  the profile, with ``_update_existing_only`` so that no user is created just to be emptied.
- An archive (mirror, ``removal: delete``) deletes users, at most 50 external_ids a request: Braze
  queues the deletion and answers how many it queued; an external_id it does not know is no error.
- A 2xx may carry non-fatal errors, ``{"message": "success", "errors": [{"type", "input_array",
  "index"}]}``: the object at ``index`` of ``attributes`` is rejected with its ``type``, the others
  were processed. Fatal errors come as 4xx/5xx with ``{"message", "errors"}``.
- Every answer carries ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (UTC epoch seconds):
  a 429, or an answer saying nothing remains, holds this client's next request until the reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import requests

from syncback.destinations.base import Change, Outcome
from syncback.destinations.braze import BrazeDestinationConfig
from syncback.destinations.http import AnnouncedReset, json_body, not_json_reason, redact, send, strict_json
from syncback.errors import (
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SystemicError,
)

MAX_DELETE = 50
#: the most users one request carries on Monthly Active Users CY 24-25 contracts
CONTRACT_LIMIT = 50
REASON_CHARS = 500


class BrazeDestination:
    """Writes one sync's records to Braze user attributes, by external_id."""

    def __init__(
        self,
        config: BrazeDestinationConfig,
        api_key: str,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.max_batch_size = config.batch_size
        self._key = api_key
        self._session = session or requests.Session()
        self._session.headers.update(
            {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        )
        self._reset = AnnouncedReset(clock)

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        if not changes:
            return []
        if len(changes) > self.max_batch_size:
            raise ValueError(f"Braze takes at most {self.max_batch_size} users a request, got {len(changes)}")
        action = changes[0].action
        if action == "archive":
            return self._delete(changes)
        if action == "release":  # the external_id is the primary key: nothing plans one
            return [
                Outcome(c.key, "skipped", reason="Braze cannot take an external_id off a user; nothing sent")
                for c in changes
            ]
        return self._track(changes)

    def close(self) -> None:
        self._session.close()

    # ---- requests ----------------------------------------------------------------------

    def _track(self, changes: Sequence[Change]) -> list[Outcome]:
        """Set the attributes of each change's user (create it where Braze has none)."""
        settled: dict[int, Outcome] = {}
        objects: list[tuple[int, str, bytes]] = []  # change index, external_id, the object as JSON
        for i, change in enumerate(changes):
            external_id, item = _attributes(change)
            if not external_id:
                settled[i] = _without_external_id(change)
                continue
            try:
                objects.append((i, external_id, strict_json(item)))
            except ValueError:
                settled[i] = Outcome(change.key, "rejected", reason=not_json_reason(change))
        if objects:
            body = b'{"attributes":[' + b",".join(text for _, _, text in objects) + b"]}"
            sent = [changes[i] for i, _, _ in objects]
            response = self._post("users/track", body, sent)
            rejected = self._non_fatal_errors(response, sent)
            for n, (i, external_id, _) in enumerate(objects):
                reason = rejected.get(n)
                settled[i] = (
                    Outcome(changes[i].key, "rejected", reason=reason)
                    if reason is not None
                    else Outcome(changes[i].key, "delivered", external_id)
                )
        return [settled[i] for i in range(len(changes))]

    def _delete(self, changes: Sequence[Change]) -> list[Outcome]:
        """Delete the users this sync wrote, 50 external_ids a request; Braze queues each deletion."""
        known = [c for c in changes if c.destination_id]
        outcomes = {
            c.key: Outcome(c.key, "skipped", reason="no Braze external_id was recorded for this user")
            for c in changes
            if not c.destination_id
        }
        for start in range(0, len(known), MAX_DELETE):
            part = known[start : start + MAX_DELETE]
            body = strict_json({"external_ids": [c.destination_id for c in part]})
            self._post("users/delete", body, part)
            # an external_id Braze does not know is not an error: the user is gone either way
            outcomes.update(
                (c.key, Outcome(c.key, "delivered", c.destination_id, created=False)) for c in part
            )
        return [outcomes[c.key] for c in changes]

    def _post(self, endpoint: str, body: bytes, sent: Sequence[Change]) -> requests.Response:
        """Return the 2xx answer to one request; raise the error any other answer means."""
        self._reset.hold(f"Braze {endpoint}")
        response = send(
            self._session,
            "POST",
            f"{self.config.url}/{endpoint}",
            f"Braze {endpoint}",
            "destination.rest_endpoint",
            self.config.timeout_s,
            data=body,
        )
        self._reset.note(response)
        self._raise_for_request(endpoint, response, sent)
        return response

    # ---- responses: classified here and nowhere else -------------------------------------------

    def _raise_for_request(self, endpoint: str, response: requests.Response, sent: Sequence[Change]) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        said = f"Braze {endpoint} answered {status}"
        message = _message(response, sent, self._key)
        if status == 401:
            raise DestinationAuthError(
                f"{said}: {message or 'unauthorized'}. The REST API key is not valid for this "
                "instance: check destination.api_key, and that destination.rest_endpoint is your instance's"
            )
        if status == 403:
            raise DestinationAuthError(
                f"{said}: {message or 'forbidden'}. Give the REST API key the users.track permission "
                "(and users.delete for removal: delete), or check that the workspace may use the API"
            )
        if status == 429:
            raise RateLimited(f"{said}: rate limit reached", self._reset.wait(response))
        if status >= 500:
            # Braze: "retry the request with exponential backoff"
            raise DestinationUnavailable(f"{said}: {message}")
        if status in (404, 405) or 300 <= status < 400:
            raise SystemicError(
                f"{said}: no Braze {endpoint} endpoint at this address; check destination.rest_endpoint "
                "(rest.<your instance>.braze.com)",
                "destination.rest_endpoint",
            )
        hint = (
            f" (on a Monthly Active Users CY 24-25 contract a request takes at most {CONTRACT_LIMIT} "
            f"users: set destination.batch_size: {CONTRACT_LIMIT})"
            if len(sent) > CONTRACT_LIMIT
            else ""
        )
        raise RequestRejected(f"{said}: {message}{hint}")

    def _non_fatal_errors(self, response: requests.Response, sent: Sequence[Change]) -> dict[int, str]:
        """Return the reason of each attributes object a 2xx's non-fatal errors name, by its index.

        An error that names no object of ``attributes`` could be any record's: the request is
        refused, and the delivery splits it until the error names one."""
        body = json_body(response)
        errors = body.get("errors") if isinstance(body, dict) else None
        found: dict[int, str] = {}
        for error in errors if isinstance(errors, list) else []:
            index = error.get("index") if isinstance(error, dict) else None
            if (
                not isinstance(error, dict)
                or error.get("input_array", "attributes") != "attributes"
                or not isinstance(index, int)
                or not 0 <= index < len(sent)
            ):
                if len(sent) == 1:
                    found[0] = _reason(error, sent, self._key)
                    continue
                raise RequestRejected(
                    f"Braze users/track: a non-fatal error names no user ({_reason(error, sent, self._key)})"
                )
            found[index] = _reason(error, [sent[index]], self._key)
        return found


def _attributes(change: Change) -> tuple[str, dict[str, Any]]:
    """Return the external_id of a change and the attributes object that writes it."""
    if change.action == "clear":
        # emptying a user's attributes must not create a user who has none
        item = {k: None for k in change.record if k != "external_id"}
        return str(change.destination_id or ""), {
            "external_id": change.destination_id,
            "_update_existing_only": True,
            **item,
        }
    value = change.record.get("external_id")
    external_id = "" if value is None else str(value)
    return external_id, {**change.record, "external_id": external_id}


def _without_external_id(change: Change) -> Outcome:
    if change.action == "clear":
        return Outcome(change.key, "skipped", reason="no Braze external_id was recorded for this user")
    return Outcome(change.key, "rejected", reason="no external_id: Braze finds users by it")


def _message(response: requests.Response, sent: Sequence[Change], key: str) -> str:
    body = json_body(response)
    if not isinstance(body, dict):
        return ""
    errors = body.get("errors")
    detail = "; ".join(str(e) for e in errors[:3]) if isinstance(errors, list) else ""
    text = f"{body.get('message', '')} {detail}".strip()
    return redact(text, sent, [key])[:300]


def _reason(error: Any, sent: Sequence[Change], key: str) -> str:
    what = (error.get("type") or error.get("message") or error) if isinstance(error, dict) else error
    return redact(f"Braze: {what}", sent, [key])[:REASON_CHARS]
