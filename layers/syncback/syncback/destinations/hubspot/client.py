"""HubSpot CRM objects: batch upsert / create / update / archive, at most 100 inputs a request, at
``/crm/objects/{api_version}/{object}/batch/...`` (or ``/crm/v3/objects/...`` with api_version v3).

Every input carries an ``objectWriteTraceId`` (the record's key), which turns on HubSpot's
multi-status answers and ties each result and each error back to its record.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import requests

from syncback.destinations.base import Change, Outcome
from syncback.destinations.http import json_body, redact, retry_after, send
from syncback.destinations.hubspot import HubSpotDestinationConfig
from syncback.destinations.registry import Mode
from syncback.errors import (
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SystemicError,
)

MAX_INPUTS = 100
_EXISTING_ID = re.compile(r"Existing ID: ?(\d+)")
_WRITE_ENDPOINT = {"upsert": "upsert", "mirror": "upsert", "update": "update", "insert": "create"}


class HubSpotDestination:
    """Writes one sync's records to one HubSpot object type."""

    max_batch_size = MAX_INPUTS

    def __init__(
        self,
        config: HubSpotDestinationConfig,
        token: str,
        mode: Mode,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self.mode = mode
        self._session = session or requests.Session()
        self._session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        objects = "v3/objects" if config.api_version == "v3" else f"objects/{config.api_version}"
        self._base = f"{config.base_url.rstrip('/')}/crm/{objects}/{config.object}/batch"

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        if not changes:
            return []
        if len(changes) > MAX_INPUTS:
            raise ValueError(f"HubSpot takes at most {MAX_INPUTS} inputs a request, got {len(changes)}")
        if changes[0].action == "archive":
            return self._archive(changes)
        if changes[0].destination_id is not None:
            return self._write_by_id(changes)
        if changes[0].action != "upsert":  # clear or release a record we hold no id of: nothing to do
            return [
                Outcome(c.key, "skipped", reason="no HubSpot id was recorded for this record")
                for c in changes
            ]
        return self._write_by_identifier(changes)

    def close(self) -> None:
        self._session.close()

    # ---- requests ----------------------------------------------------------------------

    def _write_by_identifier(self, changes: Sequence[Change]) -> list[Outcome]:
        """Upsert (or, by the mode, create or update) records by the id property's value."""
        endpoint = _WRITE_ENDPOINT[self.mode]
        body = {"inputs": [self._input(change, endpoint) for change in changes]}
        response = self._post(endpoint, body)
        if response.status_code == 409 and endpoint == "create":
            return self._conflict(changes, response)
        self._raise_for_request(response, changes)
        return self._outcomes(changes, response, created=endpoint == "create")

    def _write_by_id(self, changes: Sequence[Change]) -> list[Outcome]:
        """Update records by the HubSpot id the snapshot holds: an identifier that changed moves
        with its record instead of making a second one. A record deleted in HubSpot since is
        answered ``gone``: the delivery writes it again by its identifier."""
        inputs = [
            {"id": c.destination_id, "properties": _properties(c), "objectWriteTraceId": c.key}
            for c in changes
        ]
        response = self._post("update", {"inputs": inputs})
        self._raise_for_request(response, changes)
        return self._outcomes(changes, response, created=None)

    def _input(self, change: Change, endpoint: str) -> dict[str, Any]:
        item: dict[str, Any] = {"properties": _properties(change), "objectWriteTraceId": change.key}
        if endpoint != "create":
            item["id"] = str(change.record[self.config.id_property])
            item["idProperty"] = self.config.id_property
        return item

    def _archive(self, changes: Sequence[Change]) -> list[Outcome]:
        known = [c for c in changes if c.destination_id]
        outcomes = [
            Outcome(c.key, "skipped", reason="no HubSpot id was recorded for this record; nothing to archive")
            for c in changes
            if not c.destination_id
        ]
        if known:
            response = self._post("archive", {"inputs": [{"id": c.destination_id} for c in known]})
            self._raise_for_request(response, known)
            # archive answers 204 with no body: every input was archived (unknown ids are ignored)
            outcomes += [Outcome(c.key, "delivered", c.destination_id, created=False) for c in known]
        return outcomes

    def _post(self, endpoint: str, body: dict[str, Any]) -> requests.Response:
        url = f"{self._base}/{endpoint}"
        return send(
            self._session,
            "POST",
            url,
            f"HubSpot {endpoint}",
            "destination.base_url",
            self.config.timeout_s,
            json=body,
        )

    # ---- responses: classified here and nowhere else -------------------------------------------

    def _raise_for_request(self, response: requests.Response, sent: Sequence[Change]) -> None:
        """Raise the error a whole-request failure means; return for 2xx."""
        status = response.status_code
        if status < 300:
            return
        body = _json(response)
        message = redact(str(body.get("message", "")), sent)[:300]
        wait = retry_after(response)
        if status in (401, 403):
            raise DestinationAuthError(
                f"HubSpot answered {status} {body.get('category', '')}: {message}. Check the token and its scopes"
            )
        if status == 429:
            policy = str(body.get("policyName", ""))
            if wait is None and policy != "DAILY":
                # a rolling window: waiting one whole interval is sure to free it (when we were
                # not alone in using it, our own budget could not see that)
                wait = _interval_seconds(response)
            raise RateLimited(f"HubSpot rate limit {policy} reached".replace("  ", " "), wait)
        if status == 423:
            # HubSpot: "Locks will last for 2 seconds ... include a delay of at least 2 seconds"
            raise RateLimited("HubSpot locked the records (423)", wait or 2.0)
        if status >= 500 or status == 477:
            raise DestinationUnavailable(f"HubSpot answered {status}: {message}", wait)
        self._raise_if_systemic(status, str(body.get("message", "")), message)
        raise RequestRejected(f"HubSpot answered {status} {body.get('category', '')}: {message}")

    def _raise_if_systemic(self, status: int, raw: str, message: str) -> None:
        """Raise SystemicError for an answer that says the request could never work, whatever it held."""
        said = f"HubSpot answered {status}: {message}"
        if "Unable to infer object type" in raw:
            raise SystemicError(
                f"{said}; no object type {self.config.object!r} in this portal", "destination.object"
            )
        if "by non-unique" in raw:
            raise SystemicError(
                f"{said}; id_property {self.config.id_property!r} is not a unique property of {self.config.object}",
                "destination.id_property",
            )
        missing = _missing_property(raw)
        if missing is not None:
            raise SystemicError(
                f"HubSpot has no property {missing!r} on {self.config.object}; create it in HubSpot or "
                "map another field",
                f"mapping.{missing}",
            )
        if status in (404, 405) or 300 <= status < 400:
            raise SystemicError(
                f"{said}; the API address is wrong, or HubSpot has no API version {self.config.api_version}",
                "destination.base_url",
            )

    def _conflict(self, changes: Sequence[Change], response: requests.Response) -> list[Outcome]:
        if len(changes) > 1:
            # HubSpot names only the first conflict: let the delivery split the request
            raise RequestRejected(
                f"HubSpot answered 409 CONFLICT: {_json(response).get('message', '')}"[:300]
            )
        found = _EXISTING_ID.search(str(_json(response).get("message", "")))
        return [
            Outcome(
                changes[0].key,
                "skipped",
                found.group(1) if found else None,
                "already in HubSpot; mode insert creates new records only",
            )
        ]

    def _outcomes(
        self, changes: Sequence[Change], response: requests.Response, created: bool | None
    ) -> list[Outcome]:
        body = _json(response)
        by_key: dict[str, Outcome] = {}
        by_id_value = {_normal(c.record.get(self.config.id_property)): c.key for c in changes}
        for result in body.get("results", []):
            key = result.get("objectWriteTraceId") or by_id_value.get(
                _normal(result.get("properties", {}).get(self.config.id_property))
            )
            if key is not None:
                # an upsert says whether it created the record; create always does, update never
                made = result.get("new") if isinstance(result.get("new"), bool) else created
                by_key[key] = Outcome(key, "delivered", str(result.get("id")), created=made)
        by_destination_id = {str(c.destination_id): c.key for c in changes if c.destination_id}
        for error in body.get("errors", []):
            keys = _error_keys(error) or self._keys_named_by(error, by_id_value, by_destination_id)
            for key in keys:
                by_key[key] = self._error_outcome(key, error, [c for c in changes if c.key == key])
        return [
            by_key.get(c.key) or Outcome(c.key, "rejected", reason="HubSpot did not acknowledge this record")
            for c in changes
        ]

    def _keys_named_by(
        self, error: dict[str, Any], by_id_value: dict[str, str], by_destination_id: dict[str, str]
    ) -> list[str]:
        """Return the records an error without an objectWriteTraceId names: by the id values in its
        context (the identifier's value, or the HubSpot id), else by an identifier quoted in its message."""
        context = error.get("context") or {}
        named = [str(v) for v in context.get("id", []) or []] + [
            str(v) for v in context.get(self.config.id_property, []) or []
        ]
        keys = [by_id_value.get(_normal(v)) or by_destination_id.get(v) for v in named]
        found = [k for k in keys if k is not None]
        if found:
            return found
        message = _normal(error.get("message", ""))
        return [key for value, key in by_id_value.items() if value and value in message][:1]

    def _error_outcome(self, key: str, error: dict[str, Any], sent: Sequence[Change]) -> Outcome:
        category = str(error.get("category", "ERROR"))
        missing = _missing_property(str(error.get("message", "")))
        if missing is not None:  # not this record's fault: every record writes the property
            self._raise_if_systemic(400, str(error.get("message", "")), "")
        # HubSpot quotes the values it refused; reasons are kept and shown, values must not be
        message = redact(str(error.get("message", "")), sent)[:500]
        if category == "OBJECT_NOT_FOUND" and sent and sent[0].destination_id is not None:
            return Outcome(key, "gone", reason="no longer in HubSpot")
        if category == "OBJECT_NOT_FOUND" and self.mode == "update":
            return Outcome(key, "skipped", reason="not in HubSpot; mode update changes existing records only")
        return Outcome(key, "rejected", reason=f"{category}: {message}")


_MISSING = re.compile(r'PROPERTY_DOESNT_EXIST[^}]*?\\?"name\\?"\s*:\s*\\?"([^"\\]+)')
_MISSING_BEFORE = re.compile(r'\\?"name\\?"\s*:\s*\\?"([^"\\]+)\\?"[^}]*?PROPERTY_DOESNT_EXIST')


def _missing_property(message: str) -> str | None:
    """Return the property a HubSpot "Property values were not valid" message says does not exist."""
    if "PROPERTY_DOESNT_EXIST" not in message:
        return None
    found = _MISSING.search(message) or _MISSING_BEFORE.search(message)
    return found.group(1) if found else "?"


def _properties(change: Change) -> dict[str, Any]:
    # HubSpot clears a property when given "", and documents no meaning for null
    return {k: "" if v is None else v for k, v in change.record.items()}


def _error_keys(error: dict[str, Any]) -> list[str]:
    trace = error.get("objectWriteTraceId")
    if trace:
        return [str(trace)]
    context = error.get("context") or {}
    return [str(t) for t in context.get("objectWriteTraceId", [])]


def _normal(value: Any) -> str:
    return str(value).strip().lower()


def _json(response: requests.Response) -> dict[str, Any]:
    body = json_body(response)
    return body if isinstance(body, dict) else {}


def _interval_seconds(response: requests.Response) -> float:
    try:
        return int(response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds", "10000")) / 1000
    except ValueError:
        return 10.0
