"""A Braze REST API on loopback, as Braze documents ``/users/track`` and ``/users/delete`` (a test
fake: production code never imports it).

- ``POST /users/track`` with ``{"attributes": [...], "events": [...], "purchases": [...]}``: at most
  ``max_objects`` (75) objects in total a request, else 400. Each attributes object names its user
  by ``external_id`` (a string); the user is created when unknown (``_update_existing_only: true``:
  left alone), then each attribute is set, and null removes it. A bad object is a non-fatal error:
  the answer is still 2xx, ``{"message": "success", "attributes_processed": n, "errors": [{"type",
  "input_array": "attributes", "index"}]}``, and the other objects are processed;
- ``POST /users/delete`` with ``{"external_ids": [...]}`` (at most 50, and one kind of identifier a
  request): deletes those users, ``{"deleted": n, "message": "success"}``;
- ``Authorization: Bearer <key>``, else 401; a key without the endpoint's permission: 403;
- ``requests_per_window`` in fixed windows of ``window_s`` seconds (Braze: 3; here 1 by default, so
  waits stay short), aligned on the epoch (a reset is
  a moment when the count starts again), then 429; every answer carries ``X-RateLimit-Limit``,
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (UTC epoch seconds), lower case as over HTTP/2.

Fault knobs: ``reject_values`` (an object holding one of them is a non-fatal error), ``fail_next``
(answer the next requests so), and random 429s, 503s and answers too late (after the work was
done). ``FAKE`` and ``FAKES`` are its views for the contract suites.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

import requests

from tests.fakes.contract import Knobs, RandomFaults
from tests.fakes.loopback import Answer, FixedWindow, LoopbackServer

KEY = "contract-braze-rest-key"
MAX_OBJECTS, MAX_DELETE = 75, 50
PERMISSIONS = ("users.track", "users.delete")


class BrazeFake(LoopbackServer, Knobs):
    """The user data endpoints of one Braze workspace, and its view for the contract suites."""

    name = "braze"
    env = {"CONTRACT_BRAZE_KEY": KEY}
    by_hand = True

    def __init__(
        self,
        requests_per_window: int | None = None,
        window_s: float = 1.0,
        max_objects: int = MAX_OBJECTS,
        permissions: tuple[str, ...] = PERMISSIONS,
    ) -> None:
        self.window = FixedWindow(requests_per_window, window_s, shown=250_000)
        self.max_objects = max_objects
        self.permissions = permissions
        #: users by external_id: their attributes (a removed attribute is absent)
        self.users: dict[str, dict[str, Any]] = {}
        #: every path and parsed body that reached an endpoint (after the key and the rate limit)
        self.received: list[tuple[str, Any]] = []
        self.reject_values: set[str] = set()
        self.random_faults: RandomFaults | None = None
        self.late_s = 2.5
        self.counts = {"requests": 0, "created": 0, "429": 0, "track": 0, "delete": 0, "deleted": 0}
        self._next: deque[Answer] = deque()
        self._names: dict[str, None] = {}  # every attribute name ever set, in order
        self._hand = 0
        self._lock = threading.Lock()
        super().__init__()

    def fail_next(
        self, status: int, body: dict[str, Any], n: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``n`` requests with ``status`` and ``body`` (after the key is checked)."""
        with self._lock:
            self._next.extend([self._json(status, body, headers)] * n)

    # ---- one request ---------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        path = target.split("?", 1)[0]
        with self._lock:
            self.counts["requests"] += 1
            if headers.get("authorization", "") != f"Bearer {KEY}":
                return self._json(401, {"message": "Invalid API key"})
            if method != "POST" or path not in ("/users/track", "/users/delete"):
                return self._json(404, {"message": "Not Found"})
            if path.removeprefix("/").replace("/", ".") not in self.permissions:
                return self._json(
                    403, {"message": f"Forbidden: the API key lacks {path[1:].replace('/', '.')}"}
                )
            limited = self._rate_limited()
            if limited is not None:
                return limited
            if self._next:
                return self._next.popleft()
            fault = self.random_faults.draw() if self.random_faults else None
            if fault == "429":
                self.counts["429"] += 1
                return self._json(429, {"message": "Too Many Requests"}, remaining=0)
            if fault == "5xx":
                return self._json(503, {"message": "Service Unavailable"})
            try:
                payload = json.loads(body)
                assert isinstance(payload, dict)
            except (ValueError, AssertionError):
                return self._json(400, {"message": "Bad Request: the body is not a JSON object"})
            self.received.append((path, payload))
            answer = self._track(payload) if path == "/users/track" else self._delete(payload)
        if fault == "late":  # done, and answered after the client gave up
            time.sleep(self.late_s)
        return answer

    def _track(self, payload: dict[str, Any]) -> Answer:
        arrays = [payload.get(name) or [] for name in ("attributes", "events", "purchases")]
        if not all(isinstance(a, list) for a in arrays):
            return self._json(400, {"message": "Bad Request: attributes, events and purchases are arrays"})
        total = sum(len(a) for a in arrays)
        if total > self.max_objects:
            return self._json(
                400,
                {
                    "message": f"Bad Request: {total} objects; at most {self.max_objects} attributes, events "
                    "and purchases in total a request",
                    "errors": [],
                },
            )
        self.counts["track"] += 1
        errors, processed = [], 0
        for index, item in enumerate(arrays[0]):
            error = self._set_attributes(item)
            if error is None:
                processed += 1
            else:
                errors.append({"type": error, "input_array": "attributes", "index": index})
        answer: dict[str, Any] = {"message": "success", "attributes_processed": processed}
        if errors:
            answer["errors"] = errors
        return self._json(201, answer)

    def _set_attributes(self, item: Any) -> str | None:
        """Apply one attributes object; return its non-fatal error, if any."""
        if not isinstance(item, dict):
            return "attributes objects must be JSON objects"
        external_id = item.get("external_id")
        if external_id is None:
            return "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"
        if not isinstance(external_id, str) or not external_id:
            return "'external_id' must be a non-empty string"
        values = [v for k, v in item.items() if k != "external_id" and isinstance(v, str | int | float)]
        if any(str(v).strip().lower() in self.reject_values for v in values if not isinstance(v, bool)):
            return "Invalid value for a custom attribute"
        user = self.users.get(external_id)
        if user is None:
            if item.get("_update_existing_only") is True:
                return None  # update only: nobody to update, nobody made
            user = self.users[external_id] = {}
            self.counts["created"] += 1
        for name, value in item.items():
            if name in ("external_id", "_update_existing_only"):
                continue
            self._names.setdefault(name)
            if value is None:
                user.pop(name, None)  # "To remove a profile attribute, set it to null"
            else:
                user[name] = value
        return None

    def _delete(self, payload: dict[str, Any]) -> Answer:
        kinds = [k for k in ("external_ids", "user_aliases", "braze_ids") if k in payload]
        ids = payload.get("external_ids")
        if kinds != ["external_ids"] or not isinstance(ids, list) or not 1 <= len(ids) <= MAX_DELETE:
            return self._json(
                400, {"message": f"Bad Request: one kind of identifier, 1 to {MAX_DELETE} of them"}
            )
        self.counts["delete"] += 1
        deleted = sum(1 for i in ids if self.users.pop(str(i), None) is not None)
        self.counts["deleted"] += deleted
        return self._json(201, {"deleted": deleted, "message": "success"})

    # ---- around the work -----------------------------------------------------------------------

    def _rate_limited(self) -> Answer | None:
        if not self.window.take():
            self.counts["429"] += 1
            return self._json(429, {"message": "Too Many Requests"})
        return None

    def _json(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        remaining: int | None = None,
    ) -> Answer:
        rate = {name.lower(): value for name, value in self.window.headers(remaining).items()}
        out = {"content-type": "application/json", **rate, **(headers or {})}
        return status, out, json.dumps(body).encode()

    # ---- the contract suites' view -------------------------------------------------------------

    def destination(self) -> dict[str, Any]:
        return {
            "type": "braze",
            "rest_endpoint": "rest.iad-01.braze.com",
            "base_url": self.url,
            "api_key": "env:CONTRACT_BRAZE_KEY",
            "rate_limit": {"requests": 10_000, "per_seconds": 1},
            "timeout_s": 2,
        }

    def mapping(self, generic: dict[str, Any], key_column: str) -> dict[str, Any]:
        # found by external_id, the model's key; the generic fields are custom attributes
        return {"external_id": key_column, **generic}

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"id": external_id, **{name: user.get(name) for name in self._names}}
                for external_id, user in self.users.items()
            ]

    def create_by_hand(self, email: str) -> str:
        with self._lock:
            self._hand += 1
            external_id = f"by-hand-{self._hand}"
            self.users[external_id] = {"email": email, "firstname": "by hand"}
            self._names.setdefault("email")
            self._names.setdefault("firstname")
            self.counts["created"] += 1
            return external_id

    def delete_by_hand(self, record_id: str) -> None:
        with self._lock:
            self.users.pop(record_id, None)

    def writes(self, request: requests.PreparedRequest) -> bool:
        return (request.path_url or "").startswith(("/users/track", "/users/delete"))


class BrazeDeleteFake(BrazeFake):
    """The same workspace, as the contract suites see a sync whose mirror deletes users."""

    variant = "delete"

    def destination(self) -> dict[str, Any]:
        return {**super().destination(), "removal": "delete"}


FAKE = BrazeFake
FAKES = [BrazeFake, BrazeDeleteFake]
