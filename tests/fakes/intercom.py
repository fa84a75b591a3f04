"""An Intercom REST API on loopback, as Intercom documents its contacts endpoints (a test fake:
production code never imports it).

- ``POST /contacts``: creates a contact (``role`` user or lead; a user needs an external_id or an
  e-mail) and answers it, with its ``id``. A contact that matches one Intercom has is a 409
  ``{"type": "error.list", "errors": [{"code": "conflict", "message": "A contact matching those
  details already exists with id=<id>"}]}``. What matches (not settled by the docs we read): the
  same external_id; for a contact without one, the same e-mail (trimmed, any case).
- ``PUT /contacts/{id}``: updates the fields sent (null empties one; ``custom_attributes`` merge,
  null removes one); an unknown, deleted or archived id is a 404 ``not_found``.
- ``POST /contacts/{id}/archive`` and ``DELETE /contacts/{id}``; ``POST /contacts/search`` with a
  single ``{"field", "operator": "=", "value"}`` filter on external_id or email.
- ``Authorization: Bearer <token>``, else 401; a bad body or value, 400 ``parameter_invalid``.
- ``requests_per_window`` in fixed windows of ``window_s`` seconds (Intercom: 10; here 1 by
  default, so waits stay short), aligned on the epoch, then 429; every answer carries
  ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (epoch seconds).

Fault knobs: ``reject_values`` (a contact holding one is a 400), ``fail_next``, ``conflict_without_id``
(a 409 whose message names no id: the client must search), ``unsearchable`` (ids search does not
find yet, as Intercom's index lags behind new contacts), and random 429s, 503s and answers too
late (after the work was done). ``FAKE`` and ``FAKES`` are its views for the contract suites.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from typing import Any

import requests

from tests.fakes.contract import Knobs, RandomFaults
from tests.fakes.loopback import Answer, FixedWindow, LoopbackServer

TOKEN = "contract-intercom-token"
STANDARD = ("external_id", "email", "phone", "name", "avatar", "signed_up_at", "last_seen_at", "owner_id")


class IntercomFake(LoopbackServer, Knobs):
    """The contacts of one Intercom workspace, and its view for the contract suites (found by
    external_id, which the model's key gives)."""

    name = "intercom"
    env = {"CONTRACT_INTERCOM_TOKEN": TOKEN}
    by_hand = True
    identify_by = "external_id"
    # a request a contact, and a 429's reset is the next whole second: 1,200 rows took two minutes
    fault_rows = 400

    def __init__(self, requests_per_window: int | None = None, window_s: float = 1.0) -> None:
        self.window = FixedWindow(requests_per_window, window_s, shown=1_666)
        #: contacts by id: role, the standard fields, custom_attributes, archived
        self.contacts: dict[str, dict[str, Any]] = {}
        #: every method, path and parsed body that reached an endpoint (after the token and the limit)
        self.received: list[tuple[str, str, Any]] = []
        #: the Intercom-Version header of every request
        self.versions: list[str | None] = []
        self.reject_values: set[str] = set()
        self.random_faults: RandomFaults | None = None
        self.conflict_without_id = False
        self.unsearchable: set[str] = set()
        self.late_s = 2.5
        self.counts = {
            "requests": 0,
            "created": 0,
            "429": 0,
            "409": 0,
            "search": 0,
            "archived": 0,
            "deleted": 0,
        }
        self._next: deque[Answer] = deque()
        # the workspace's custom attributes, in order: every contact shows each (null where unset)
        self._names: dict[str, None] = {}
        self._lock = threading.Lock()
        super().__init__()

    def fail_next(
        self, status: int, body: dict[str, Any], n: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``n`` requests with ``status`` and ``body`` (after the token is checked)."""
        with self._lock:
            self._next.extend([self._json(status, body, headers)] * n)

    # ---- one request ---------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        path = target.split("?", 1)[0].rstrip("/")
        parts = path.strip("/").split("/")
        with self._lock:
            self.counts["requests"] += 1
            self.versions.append(headers.get("intercom-version"))
            if headers.get("authorization", "") != f"Bearer {TOKEN}":
                return self._error(401, "unauthorized", "Access Token Invalid")
            if parts[0] != "contacts" or len(parts) > 3:
                return self._error(404, "route_not_found", "The requested route does not exist")
            limited = self._rate_limited()
            if limited is not None:
                return limited
            if self._next:
                return self._next.popleft()
            fault = self.random_faults.draw() if self.random_faults else None
            if fault == "429":
                self.counts["429"] += 1
                return self._error(429, "rate_limit_exceeded", "Exceeded rate limit", remaining=0)
            if fault == "5xx":
                return self._error(
                    503, "service_unavailable", "Sorry, the API service is temporarily unavailable"
                )
            payload: Any = None
            if body:
                try:
                    payload = json.loads(body)
                except ValueError:
                    return self._error(400, "parameter_invalid", "The body is not JSON")
            self.received.append((method, path, payload))
            answer = self._route(method, parts, payload)
        if fault == "late":  # done, and answered after the client gave up
            time.sleep(self.late_s)
        return answer

    def _route(self, method: str, parts: list[str], payload: Any) -> Answer:
        if parts == ["contacts"] and method == "POST":
            return self._create(payload)
        if parts == ["contacts", "search"] and method == "POST":
            return self._search(payload)
        if len(parts) == 2 and method == "PUT":
            return self._update(parts[1], payload)
        if len(parts) == 2 and method == "DELETE":
            return self._delete(parts[1])
        if len(parts) == 3 and parts[2] == "archive" and method == "POST":
            return self._archive(parts[1])
        return self._error(404, "route_not_found", "The requested route does not exist")

    def _create(self, payload: Any) -> Answer:
        if not isinstance(payload, dict):
            return self._error(400, "parameter_invalid", "The body must be a JSON object")
        role = payload.get("role", "user")
        if role not in ("user", "lead"):
            return self._error(400, "parameter_invalid", "role must be user or lead")
        if role == "user" and not payload.get("external_id") and not payload.get("email"):
            return self._error(400, "parameter_invalid", "A user requires an external_id or email")
        problem = self._invalid(payload)
        if problem is not None:
            return problem
        existing = self._match(payload.get("external_id"), payload.get("email"))
        if existing is not None:
            self.counts["409"] += 1
            tail = "" if self.conflict_without_id else f" with id={existing}"
            return self._error(409, "conflict", f"A contact matching those details already exists{tail}")
        contact_id = uuid.uuid4().hex[:24]
        contact: dict[str, Any] = {"role": role, "custom_attributes": {}, "archived": False}
        self.contacts[contact_id] = contact
        self._apply(contact, payload)
        self.counts["created"] += 1
        return self._json(200, self._view(contact_id))

    def _update(self, contact_id: str, payload: Any) -> Answer:
        contact = self.contacts.get(contact_id)
        if contact is None or contact["archived"]:
            return self._error(404, "not_found", "User Not Found")
        if not isinstance(payload, dict):
            return self._error(400, "parameter_invalid", "The body must be a JSON object")
        problem = self._invalid(payload)
        if problem is not None:
            return problem
        external_id = payload.get("external_id")
        if external_id and self._match(external_id, None, but=contact_id) is not None:
            self.counts["409"] += 1
            return self._error(409, "conflict", "A contact matching those details already exists")
        self._apply(contact, payload)
        return self._json(200, self._view(contact_id))

    def _archive(self, contact_id: str) -> Answer:
        contact = self.contacts.get(contact_id)
        if contact is None:
            return self._error(404, "not_found", "Contact Not Found")
        contact["archived"] = True
        self.counts["archived"] += 1
        return self._json(
            200,
            {
                "id": contact_id,
                "external_id": contact.get("external_id"),
                "type": "contact",
                "archived": True,
            },
        )

    def _delete(self, contact_id: str) -> Answer:
        contact = self.contacts.pop(contact_id, None)
        if contact is None:
            return self._error(404, "not_found", "User Not Found")
        self.counts["deleted"] += 1
        return self._json(
            200,
            {"id": contact_id, "external_id": contact.get("external_id"), "type": "contact", "deleted": True},
        )

    def _search(self, payload: Any) -> Answer:
        self.counts["search"] += 1
        query = payload.get("query") if isinstance(payload, dict) else None
        if (
            not isinstance(query, dict)
            or query.get("field") not in ("external_id", "email")
            or query.get("operator") != "="
        ):
            return self._error(400, "parameter_invalid", "query must be {field, operator: =, value}")
        field, value = query["field"], _norm(query.get("value"))
        data = [
            self._view(i)
            for i, c in self.contacts.items()
            if not c["archived"] and i not in self.unsearchable and _norm(c.get(field)) == value
        ]
        return self._json(200, {"type": "list", "data": data, "total_count": len(data)})

    # ---- contacts ------------------------------------------------------------------------------

    def _match(self, external_id: Any, email: Any, but: str | None = None) -> str | None:
        """Return the id of a live contact the given identifiers match (see the module's note)."""
        for contact_id, contact in self.contacts.items():
            if contact["archived"] or contact_id == but:
                continue
            if external_id not in (None, "") and str(contact.get("external_id")) == str(external_id):
                return contact_id
            if external_id in (None, "") and email and _norm(contact.get("email")) == _norm(email):
                return contact_id
        return None

    def _invalid(self, payload: dict[str, Any]) -> Answer | None:
        custom = payload.get("custom_attributes", {})
        if not isinstance(custom, dict):
            return self._error(400, "parameter_invalid", "custom_attributes must be an object")
        values = [v for k, v in payload.items() if k != "custom_attributes"] + list(custom.values())
        for value in values:
            if isinstance(value, dict | list):
                return self._error(400, "parameter_invalid", "Custom attribute values must be scalars")
        for name in payload:
            if name not in (*STANDARD, "role", "custom_attributes"):
                return self._error(400, "parameter_not_found", f"'{name}' is not a contact field")
        if (external_id := payload.get("external_id")) and not isinstance(external_id, str):
            return self._error(400, "parameter_invalid", "external_id must be a string")
        if any(
            str(v).strip().lower() in self.reject_values
            for v in values
            if v is not None and not isinstance(v, bool)
        ):
            return self._error(400, "parameter_invalid", "Invalid value for a contact attribute")
        return None

    def _apply(self, contact: dict[str, Any], payload: dict[str, Any]) -> None:
        for name, value in payload.items():
            if name == "custom_attributes":
                contact["custom_attributes"].update(value)
                self._names.update(dict.fromkeys(value))
            elif name != "role":
                contact[name] = value

    def _view(self, contact_id: str) -> dict[str, Any]:
        c = self.contacts[contact_id]
        return {
            "type": "contact",
            "id": contact_id,
            "role": c["role"],
            **{name: c.get(name) for name in STANDARD},
            "custom_attributes": {n: c["custom_attributes"].get(n) for n in self._names},
        }

    # ---- around the work -----------------------------------------------------------------------

    def _rate_limited(self) -> Answer | None:
        if not self.window.take():
            self.counts["429"] += 1
            return self._error(429, "rate_limit_exceeded", "Exceeded rate limit")
        return None

    def _error(self, status: int, code: str, message: str, remaining: int | None = None) -> Answer:
        body = {
            "type": "error.list",
            "request_id": uuid.uuid4().hex,
            "errors": [{"code": code, "message": message}],
        }
        return self._json(status, body, remaining=remaining)

    def _json(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        remaining: int | None = None,
    ) -> Answer:
        out = {
            "Content-Type": "application/json; charset=utf-8",
            **self.window.headers(remaining),
            **(headers or {}),
        }
        return status, out, json.dumps(body).encode()

    # ---- the contract suites' view -------------------------------------------------------------

    def destination(self) -> dict[str, Any]:
        return {
            "type": "intercom",
            "access_token": "env:CONTRACT_INTERCOM_TOKEN",
            "identify_by": self.identify_by,
            "base_url": self.url,
            "rate_limit": {"requests": 10_000, "per_seconds": 1},
            "concurrency": 4,
            "timeout_s": 2,
        }

    def mapping(self, generic: dict[str, Any], key_column: str) -> dict[str, Any]:
        # the key is the external_id; email is a standard field; the rest are custom attributes
        out = {}
        for name, source in generic.items():
            if name == "customer_id" and self.identify_by == "external_id":
                out["external_id"] = source
            elif name == "email":
                out["email"] = source
            else:
                out[f"custom_attributes.{name}"] = source
        if "external_id" not in out and self.identify_by == "external_id":
            out["external_id"] = key_column
        return out

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for contact_id, c in self.contacts.items():
                if c["archived"]:
                    continue
                custom = {n: c["custom_attributes"].get(n) for n in self._names}
                record = {"id": contact_id, "email": c.get("email"), **custom}
                if self.identify_by == "external_id":
                    record["customer_id"] = c.get("external_id")
                out.append(record)
            return out

    def stored(self, field: str, value: Any) -> Any:
        # an external_id is a string in Intercom
        return str(value) if field == "customer_id" and value is not None else value

    def create_by_hand(self, email: str) -> str:
        with self._lock:
            contact_id = uuid.uuid4().hex[:24]
            self.contacts[contact_id] = {
                "role": "user",
                "email": email,
                "custom_attributes": {"firstname": "by hand"},
                "archived": False,
            }
            self._names.setdefault("firstname")
            self.counts["created"] += 1
            return contact_id

    def delete_by_hand(self, record_id: str) -> None:
        with self._lock:
            self.contacts.pop(record_id, None)

    def writes(self, request: requests.PreparedRequest) -> bool:
        path = request.path_url or ""
        return path.startswith("/contacts") and not path.startswith("/contacts/search")


class IntercomEmailFake(IntercomFake):
    """The same workspace, as the contract suites see a sync that finds contacts by e-mail."""

    variant = "email"
    identifier = "email"
    identify_by = "email"


def _norm(value: Any) -> str:
    return "" if value is None else str(value).strip().lower()


FAKE = IntercomFake
FAKES = [IntercomFake, IntercomEmailFake]
