"""A local HubSpot CRM v3 objects API with HubSpot's limits, errors and injected faults.

The destination for the demo (``syncback sandbox hubspot``), the integration tests and the benchmarks;
never imported by production code. It does what HubSpot's documentation says (reference:
``destination-apis.md`` section 1); where the documentation is silent, a comment names the choice.

- writes: ``POST /crm/v3/objects/{type}/batch/{upsert,create,update,archive}``, at most 100 inputs;
- reads: ``GET /crm/v3/objects/{type}/{id}[?idProperty=]``, ``GET /crm/v3/objects/{type}?limit=&after=``;
- admin, no auth: ``GET /_sandbox/stats``, ``POST /_sandbox/reset``, ``GET|POST /_sandbox/faults``,
  ``GET /_sandbox/objects/{type}``.

Objects live in memory; with ``db_path`` each request's changes are also committed to SQLite, and the
next sandbox opened on that file starts with them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import socket
import sqlite3
import struct
import sys
import threading
import time
import traceback
import uuid
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

BATCH_LIMIT = 100
FORBIDDEN_TOKEN = "forbidden-token"  # any sandbox answers this token with 403 MISSING_SCOPES
PORTAL_ID = 1234567
DEFAULT_UNIQUE_PROPERTIES = {"contacts": "email", "companies": "domain"}
_TYPE_IDS = {"0-1": "contacts", "0-2": "companies", "0-3": "deals", "0-5": "tickets"}
_STANDARD_TYPES = {"contacts", "companies", "deals", "tickets", "products", "line_items", "quotes"}
_CUSTOM_TYPE = re.compile(r"^(p_\w+|2-\d+)$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_BATCH = re.compile(r"^/crm/v3/objects/([^/]+)/batch/(upsert|create|update|archive)$")
_ONE = re.compile(r"^/crm/v3/objects/([^/]+)/([^/]+)$")
_LIST = re.compile(r"^/crm/v3/objects/([^/]+)/?$")
_AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find "
    "more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
# HubSpot documents the 423 and the 5xx statuses, not their bodies: these are shaped like its other errors
_LOCKED = (
    "Records are locked by another write; locks last 2 seconds, retry after a delay of at least 2 seconds"
)
_SERVER_ERRORS = {
    502: (
        "BAD_GATEWAY",
        "Processing limits have been met. Pause your requests for a few seconds, then retry.",
    ),
    503: ("SERVICE_UNAVAILABLE", "The service is temporarily unavailable. Pause, then retry."),
    504: (
        "GATEWAY_TIMEOUT",
        "The request timed out upstream. Pause your requests for a few seconds, then retry.",
    ),
}


@dataclass
class Faults:
    """What the sandbox does wrong on purpose; each rate is a fraction of the batch write requests."""

    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_timeout: float = 0.0
    rate_reset: float = 0.0
    timeout_seconds: float = 5.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.5
    reject_values: set[str] = field(default_factory=set)
    fail_batch_values: set[str] = field(default_factory=set)
    seed: int | None = None
    retry_after_429: float | None = None  # when set, injected 429s carry Retry-After (real ones never do)
    rate_423: float = 0.0

    def __post_init__(self) -> None:
        exclusive = [self.rate_429, self.rate_5xx, self.rate_423, self.rate_reset, self.rate_timeout]
        if any(not 0.0 <= r <= 1.0 for r in [*exclusive, self.slow_rate]) or sum(exclusive) > 1.0 + 1e-9:
            raise ValueError("fault rates must be within 0..1 and the exclusive ones must sum to at most 1")
        self.reject_values = {str(v) for v in self.reject_values}
        self.fail_batch_values = {str(v) for v in self.fail_batch_values}

    def to_json(self) -> dict[str, Any]:
        """Return the fields as JSON values, sets as sorted lists."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: sorted(v) if isinstance(v, set) else v for k, v in out.items()}

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        """Return the Faults a JSON object describes; raise ValueError on unknown fields."""
        if not isinstance(data, dict):
            raise ValueError("faults must be a JSON object")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        values: dict[str, Any] = dict(data)
        for name in ("reject_values", "fail_batch_values"):
            if name in values:
                values[name] = set(values[name])
        return cls(**values)


@dataclass
class _Response:
    status: int
    body: Any = None  # JSON value; None sends no body
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # close the socket without answering


class _Rejected(Exception):
    """The whole request fails with this response; nothing has been written."""

    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class _Input:
    id_value: str | None
    trace: str | None
    properties: dict[str, str]  # "" clears the property
    problems: list[dict[str, Any]]  # property values that are not strings, numbers, booleans or null


@dataclass
class _Stats:
    requests: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    inputs: int = 0
    created: int = 0
    updated: int = 0
    archived: int = 0
    injected: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "rate_limited": self.rate_limited,
            "inputs": self.inputs,
            "created": self.created,
            "updated": self.updated,
            "archived": self.archived,
            "injected": dict(self.injected),
        }


def _error(status: int, message: str, category: str, **extra: Any) -> _Response:
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category}
    return _Response(status, {**body, **extra})


def _rate_limited(policy: str, message: str) -> _Response:
    body = {
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
    }
    return _Response(429, {**body, "policyName": policy, "requestId": str(uuid.uuid4())})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _normalize(prop: str, value: str) -> str:
    # HubSpot stores emails lowercased and matches them case-insensitively; domains behave the same
    return value.strip().lower() if prop in ("email", "domain") else value


@dataclass(slots=True)
class _Record:
    id: int
    properties: dict[str, str]
    created_at: str
    updated_at: str
    archived: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "properties": dict(self.properties),
            "archived": self.archived,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }

    def api(self, object_type: str) -> dict[str, Any]:
        """Return the record as HubSpot answers it, with the properties HubSpot always adds."""
        modified = "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"
        defaults = {"hs_object_id": str(self.id), "createdate": self.created_at, modified: self.updated_at}
        return {**self.public(), "properties": {**defaults, **self.properties}}


class _Store:
    """Records by type and id, an index from unique value to live record, optional SQLite write-through."""

    def __init__(self, unique: dict[str, str], db_path: str | None) -> None:
        self.unique = unique
        self._db: sqlite3.Connection | None = None
        self.clear(drop_rows=False)
        if db_path:
            self._open(db_path)

    def clear(self, drop_rows: bool = True) -> None:
        self.records: dict[str, dict[int, _Record]] = {}
        self.order: dict[str, list[int]] = {}  # ids ascending, for paging with bisect
        self.index: dict[str, dict[str, int]] = {}
        self.next_id = 1
        self._dirty: dict[tuple[str, int], _Record] = {}
        if drop_rows and self._db is not None:
            self._db.execute("DELETE FROM objects")
            self._db.commit()

    def _open(self, path: str) -> None:
        # one sandbox lock guards every use, so the connection may move between handler threads
        db = sqlite3.connect(path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS objects (object_type TEXT NOT NULL, id INTEGER NOT NULL, "
            "properties TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
            "archived INTEGER NOT NULL, PRIMARY KEY (object_type, id))"
        )
        rows = db.execute("SELECT object_type, id, properties, created_at, updated_at, archived FROM objects")
        for object_type, oid, props, created, updated, archived in sorted(rows, key=lambda r: int(r[1])):
            self._put(object_type, _Record(oid, json.loads(props), created, updated, bool(archived)))
            self.next_id = max(self.next_id, oid + 1)
        self._db = db

    def _key(self, object_type: str, record: _Record) -> str | None:
        prop = self.unique.get(object_type)
        return (record.properties.get(prop) or None) if prop else None  # a cleared value is no key

    def _put(self, object_type: str, record: _Record) -> None:
        self.records.setdefault(object_type, {})[record.id] = record
        self.order.setdefault(object_type, []).append(record.id)
        key = self._key(object_type, record)
        if key is not None and not record.archived:
            self.index.setdefault(object_type, {})[key] = record.id

    def find(self, object_type: str, key: str) -> _Record | None:
        """Return the live record whose unique property (normalized) is key."""
        oid = self.index.get(object_type, {}).get(key)
        return None if oid is None else self.records[object_type][oid]

    def get(self, object_type: str, object_id: str) -> _Record | None:
        record = self.records.get(object_type, {}).get(int(object_id)) if object_id.isdigit() else None
        return record

    def create(self, object_type: str, properties: dict[str, str], now: str) -> _Record:
        record = _Record(self.next_id, dict(properties), now, now)
        self.next_id += 1
        self._put(object_type, record)
        self._dirty[object_type, record.id] = record
        return record

    def update(self, object_type: str, record: _Record, properties: dict[str, str], now: str) -> None:
        old_key = self._key(object_type, record)
        record.properties.update(properties)
        record.updated_at = now
        new_key = self._key(object_type, record)
        if new_key != old_key:
            index = self.index.setdefault(object_type, {})
            if old_key is not None:
                index.pop(old_key, None)
            if new_key is not None:
                index[new_key] = record.id
        self._dirty[object_type, record.id] = record

    def archive(self, object_type: str, record: _Record, now: str) -> None:
        record.archived = True
        record.updated_at = now
        key = self._key(object_type, record)
        if key is not None:
            self.index.get(object_type, {}).pop(key, None)
        self._dirty[object_type, record.id] = record

    def commit(self) -> None:
        """Write this request's changes to SQLite in one transaction (no-op in memory)."""
        if self._db is not None and self._dirty:
            self._db.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (t, r.id, json.dumps(r.properties), r.created_at, r.updated_at, int(r.archived))
                    for (t, _), r in self._dirty.items()
                ],
            )
            self._db.commit()
        self._dirty.clear()

    def close(self) -> None:
        self.commit()
        if self._db is not None:
            self._db.close()
            self._db = None


class HubSpotSandbox:
    """A HubSpot-compatible server on loopback, started with ``start()`` or as a context manager."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        token: str | None = None,
        requests_per_window: int | None = 100,
        window_seconds: float = 10.0,
        daily_limit: int | None = None,
        db_path: str | None = None,
        faults: Faults | None = None,
        unique_properties: dict[str, str] | None = None,
    ) -> None:
        self.host, self.port, self.token = host, port, token
        self.url = ""
        self._per_window, self._window_seconds, self._daily_limit = (
            requests_per_window,
            window_seconds,
            daily_limit,
        )
        self._unique = dict(DEFAULT_UNIQUE_PROPERTIES if unique_properties is None else unique_properties)
        self._lock = threading.Lock()
        self._store = _Store(self._unique, db_path)
        self._windows: dict[str, deque[float]] = {}
        self._daily_used = 0
        self._stats = _Stats()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.set_faults(faults or Faults())

    # ---- lifecycle and inspection ------------------------------------------------------------

    def start(self) -> HubSpotSandbox:
        if self._server is None:
            self._server = _Server((self.host, self.port), self)
            self.port = int(self._server.server_address[1])
            self.url = f"http://{self.host}:{self.port}"
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join()
            self._server = self._thread = None
        with self._lock:
            self._store.close()

    def __enter__(self) -> HubSpotSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)

    def faults(self) -> Faults:
        return self._faults

    def objects(self, object_type: str, include_archived: bool = False) -> list[dict[str, Any]]:
        object_type = _TYPE_IDS.get(object_type, object_type)
        with self._lock:
            records = self._store.records.get(object_type, {}).values()
            return [r.public() for r in records if include_archived or not r.archived]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._stats.to_json()

    def reset(self) -> None:
        """Forget objects, stats, rate-limit windows and the daily count (SQLite rows too)."""
        with self._lock:
            self._store.clear()
            self._stats = _Stats()
            self._windows.clear()
            self._daily_used = 0

    # ---- requests -------------------------------------------------------------------------------

    def _handle(self, method: str, target: str, authorization: str | None, body: bytes) -> _Response:
        parts = urlsplit(target)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        try:
            if path.startswith("/_sandbox/"):
                return self._admin(method, path, query, body)
            if not path.startswith("/crm/"):
                return _error(404, f"No route for {method} {path}", "OBJECT_NOT_FOUND")
            response, sleep_after = self._crm(method, path, query, authorization, body)
        except Exception as exc:  # a bug in the fake must show, not hang the client
            traceback.print_exc(file=sys.stderr)
            response, sleep_after = _error(500, f"sandbox bug: {exc!r}", "INTERNAL_ERROR"), 0.0
        with self._lock:
            self._stats.requests += 1
            if not response.reset:
                self._stats.by_status[str(response.status)] += 1
        if sleep_after:
            time.sleep(sleep_after)
        return response

    def _crm(
        self, method: str, path: str, query: dict[str, str], authorization: str | None, body: bytes
    ) -> tuple[_Response, float]:
        """Return the answer to a /crm request and how long to sleep before sending it."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        write = method == "POST" and _BATCH.match(path) is not None
        with self._lock:
            if not token or (self.token is not None and token not in (self.token, FORBIDDEN_TOKEN)):
                return _error(401, _AUTH_MESSAGE, "INVALID_AUTHENTICATION"), 0.0
            if token == FORBIDDEN_TOKEN:
                return _error(
                    403,
                    "This app hasn't been granted all required scopes to make this call.",
                    "MISSING_SCOPES",
                    errors=[{"message": "One or more of the following scopes are required.", "context": {}}],
                ), 0.0
            limited, headers = self._admit(token)
            if limited is not None:
                limited.headers.update(headers)
                return limited, 0.0
            faults = self._faults
            fault = self._draw_fault(faults) if write else None
            slow = write and faults.slow_rate > 0 and self._rng.random() < faults.slow_rate
            if fault is not None:
                self._stats.injected[fault] += 1
            if slow:
                self._stats.injected["slow"] += 1
        if fault not in (None, "timeout"):
            response = self._fault_response(fault, faults)
            response.headers.update(headers)
            return response, 0.0
        if slow:
            time.sleep(faults.slow_seconds)
        with self._lock:
            try:
                response = self._route(method, path, query, body)
            except _Rejected as rejected:
                response = rejected.response
            self._store.commit()
        response.headers.update(headers)
        # a timeout fault writes, then answers too late: the case that idempotent retries must survive
        return response, faults.timeout_seconds if fault == "timeout" else 0.0

    def _admit(self, token: str) -> tuple[_Response | None, dict[str, str]]:
        """Count the request against the limits; return a 429 if it is over one, and the limit headers."""
        headers: dict[str, str] = {}
        limited: _Response | None = None
        if self._daily_limit is not None and self._daily_used >= self._daily_limit:
            limited = _rate_limited("DAILY", "You have reached your daily limit.")
        window = self._windows.setdefault(token, deque())
        if self._per_window is not None:
            now = time.monotonic()
            while window and window[0] <= now - self._window_seconds:
                window.popleft()
            if limited is None and len(window) >= self._per_window:
                limited = _rate_limited(
                    "TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit."
                )
            # HubSpot does not say whether rejected calls use up the window; here they do not, so a client
            # that backs off after a 429 gets through as soon as the oldest accepted call leaves the window
            if limited is None:
                window.append(now)
            headers["X-HubSpot-RateLimit-Max"] = str(self._per_window)
            headers["X-HubSpot-RateLimit-Remaining"] = str(max(0, self._per_window - len(window)))
            headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = str(int(self._window_seconds * 1000))
        if limited is None:
            self._daily_used += 1
        else:
            self._stats.rate_limited += 1
        if self._daily_limit is not None:
            headers["X-HubSpot-RateLimit-Daily"] = str(self._daily_limit)
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(0, self._daily_limit - self._daily_used))
        return limited, headers

    def _draw_fault(self, faults: Faults) -> str | None:
        # one draw over disjoint slices, so each rate is the exact chance of its fault
        draw = self._rng.random()
        for name, rate in (
            ("429", faults.rate_429),
            ("5xx", faults.rate_5xx),
            ("423", faults.rate_423),
            ("reset", faults.rate_reset),
            ("timeout", faults.rate_timeout),
        ):
            if draw < rate:
                return name
            draw -= rate
        return None

    def _fault_response(self, fault: str, faults: Faults) -> _Response:
        if fault == "reset":
            return _Response(0, reset=True)
        if fault == "423":
            return _error(423, _LOCKED, "LOCKED")
        if fault == "5xx":
            with self._lock:
                status = self._rng.choice(sorted(_SERVER_ERRORS))
            category, message = _SERVER_ERRORS[status]
            return _error(status, message, category)
        response = _rate_limited("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.")
        if faults.retry_after_429 is not None:
            # not integral seconds when a test asks for less than one; HTTP wants an integer
            response.headers["Retry-After"] = f"{faults.retry_after_429:g}"
        return response

    def _admin(self, method: str, path: str, query: dict[str, str], body: bytes) -> _Response:
        if (method, path) == ("GET", "/_sandbox/stats"):
            return _Response(200, self.stats())
        if (method, path) == ("POST", "/_sandbox/reset"):
            self.reset()
            return _Response(200, {"status": "ok"})
        if path == "/_sandbox/faults" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    self.set_faults(Faults.from_json(json.loads(body or b"{}")))
                except (ValueError, TypeError) as exc:
                    return _error(400, f"invalid faults: {exc}", "VALIDATION_ERROR")
            return _Response(200, self.faults().to_json())
        if method == "GET" and path.startswith("/_sandbox/objects/"):
            object_type = unquote(path.removeprefix("/_sandbox/objects/"))
            return _Response(200, self.objects(object_type, query.get("archived") == "true"))
        return _error(404, f"No sandbox route for {method} {path}", "OBJECT_NOT_FOUND")

    # ---- the CRM API, called with the lock held --------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> _Response:
        if method == "POST" and (match := _BATCH.match(path)):
            object_type = self._object_type(match.group(1))
            try:
                payload = json.loads(body)
            except ValueError as exc:
                raise _Rejected(_error(400, f"Invalid input JSON: {exc}", "VALIDATION_ERROR")) from exc
            return self._batch(match.group(2), object_type, query, payload)
        if method == "GET" and (match := _ONE.match(path)):
            return self._read_one(self._object_type(match.group(1)), unquote(match.group(2)), query)
        if method == "GET" and (match := _LIST.match(path)):
            return self._read_page(self._object_type(match.group(1)), query)
        return _error(404, f"No route for {method} {path}", "OBJECT_NOT_FOUND")

    def _object_type(self, name: str) -> str:
        name = _TYPE_IDS.get(unquote(name), unquote(name))
        if name in _STANDARD_TYPES or name in self._unique or _CUSTOM_TYPE.match(name):
            return name
        raise _Rejected(_error(400, f"Unable to infer object type from: {name}", "VALIDATION_ERROR"))

    def _id_property(self, object_type: str, raw: dict[str, Any], query: dict[str, str]) -> str | None:
        """Return the input's idProperty (its own, else the query's); reject one that is not unique."""
        prop = raw.get("idProperty") or query.get("idProperty")
        if prop is not None and prop != self._unique.get(object_type):
            type_id = {v: k for k, v in _TYPE_IDS.items()}.get(object_type, object_type)
            raise _Rejected(
                _error(
                    400,
                    f"Unable to perform update/upsert by non-unique {type_id} property {prop} "
                    f"in portal ID {PORTAL_ID}",
                    "VALIDATION_ERROR",
                )
            )
        return str(prop) if prop is not None else None

    def _batch(self, action: str, object_type: str, query: dict[str, str], payload: Any) -> _Response:
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            message = "Invalid input JSON: expected an object with a list of objects under 'inputs'"
            raise _Rejected(_error(400, message, "VALIDATION_ERROR"))
        if len(inputs) > BATCH_LIMIT:
            message = f"{len(inputs)} inputs sent, over the limit of {BATCH_LIMIT} inputs per batch request"
            raise _Rejected(_error(400, message, "VALIDATION_ERROR"))
        self._stats.inputs += len(inputs)
        self._fail_whole_batch(inputs)
        started = _now()
        if action == "archive":
            for raw in inputs:
                record = self._store.get(object_type, str(raw.get("id", "")))
                if record is not None and not record.archived:  # unknown ids are ignored, as HubSpot does
                    self._store.archive(object_type, record, started)
                    self._stats.archived += 1
            return _Response(204)
        handler = {"upsert": self._upsert, "create": self._create, "update": self._update}[action]
        status, results, errors = handler(object_type, query, inputs, started)
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _now(),
        }
        if errors:
            return _Response(207, {**body, "numErrors": len(errors), "errors": errors})
        return _Response(status, body)

    def _fail_whole_batch(self, inputs: list[dict[str, Any]]) -> None:
        """Fail the request, as HubSpot's legacy batches did, when any input holds a fail_batch value."""
        bad = {v.lower() for v in self._faults.fail_batch_values}
        if not bad:
            return
        for raw in inputs:
            props = raw.get("properties")
            for name, value in [("id", raw.get("id")), *(props.items() if isinstance(props, dict) else [])]:
                if value is not None and str(value).lower() in bad:
                    message = (
                        f"Property values were not valid: {json.dumps([{'isValid': False, 'name': name}])}"
                    )
                    errors = [{"message": f"{value} was not a valid value", "in": name}]
                    raise _Rejected(_error(400, message, "VALIDATION_ERROR", errors=errors))

    def _clean(self, object_type: str, raw: dict[str, Any]) -> _Input:
        """Return the input with its property values as HubSpot stores them: strings, "" for cleared."""
        raw_id, trace = raw.get("id"), raw.get("objectWriteTraceId")
        given = raw.get("properties", {})
        inp = _Input(
            None if raw_id is None or raw_id == "" else str(raw_id),
            None if trace is None else str(trace),
            {},
            [],
        )
        if not isinstance(given, dict):
            inp.problems.append({"name": "properties", "message": "properties must be an object"})
            return inp
        unique = self._unique.get(object_type)
        for name, value in given.items():
            if value is None or value == "":  # HubSpot clears with ""; null is taken to mean the same
                inp.properties[name] = ""
            elif isinstance(value, bool):
                inp.properties[name] = "true" if value else "false"
            elif isinstance(value, int | float):
                integral = isinstance(value, float) and value.is_integer()
                inp.properties[name] = str(int(value)) if integral else str(value)
            elif isinstance(value, str):
                inp.properties[name] = _normalize(name, value) if name == unique else value
            else:
                message = f"{json.dumps(value)[:100]} is not a string, number, boolean or null"
                inp.problems.append({"name": name, "message": message})
        return inp

    def _invalid(self, object_type: str, inp: _Input) -> dict[str, Any] | None:
        """Return the error item for an input HubSpot would refuse, or None."""
        if inp.problems:
            details = [{"isValid": False, "error": "INVALID_PROPERTY_VALUE", **p} for p in inp.problems]
            return _item(
                "VALIDATION_ERROR", f"Property values were not valid: {json.dumps(details)}", inp, details
            )
        email = inp.properties.get("email")
        if object_type == "contacts" and email and not _EMAIL.match(email):
            detail = {
                "isValid": False,
                "message": f"Email address {email} is invalid",
                "error": "INVALID_EMAIL",
            }
            return _item(
                "VALIDATION_ERROR", f"Email address {email} is invalid", inp, [{**detail, "name": "email"}]
            )
        rejected = {v.lower() for v in self._faults.reject_values}  # emails arrive lowercased
        for name, value in [("id", inp.id_value), *inp.properties.items()]:
            if value is not None and value.lower() in rejected:
                detail = {
                    "isValid": False,
                    "message": f"{value} was not a valid value",
                    "error": "INVALID_OPTION",
                }
                message = f"Property values were not valid: {json.dumps([{**detail, 'name': name}])}"
                return _item("VALIDATION_ERROR", message, inp, [{**detail, "name": name}])
        return None

    def _result(self, object_type: str, record: _Record, inp: _Input, new: bool | None) -> dict[str, Any]:
        result = record.api(object_type)
        if new is not None:
            result["new"] = new
        if inp.trace is not None:
            result["objectWriteTraceId"] = inp.trace
        return result

    def _upsert(
        self, object_type: str, query: dict[str, str], inputs: list[dict[str, Any]], now: str
    ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        props = [self._id_property(object_type, raw, query) for raw in inputs]
        if any(p is None for p in props):
            raise _Rejected(_error(400, "idProperty is required to upsert", "VALIDATION_ERROR"))
        cleaned = [self._clean(object_type, raw) for raw in inputs]
        keys = [
            None if i.id_value is None else _normalize(str(p), i.id_value)
            for i, p in zip(cleaned, props, strict=True)
        ]
        _reject_duplicates([k for k in keys if k is not None])
        results, errors = [], []
        for inp, prop, key in zip(cleaned, props, keys, strict=True):
            if key is None:
                errors.append(_item("VALIDATION_ERROR", "id is required to upsert", inp))
                continue
            inp.properties[str(prop)] = key  # the id decides the unique value, whatever properties say
            error = self._invalid(object_type, inp)
            if error is not None:
                errors.append(error)
                continue
            existing = self._store.find(object_type, key)
            if existing is not None:
                self._store.update(object_type, existing, inp.properties, now)
                self._stats.updated += 1
            record = existing or self._store.create(object_type, inp.properties, now)
            self._stats.created += existing is None
            results.append(self._result(object_type, record, inp, new=existing is None))
        return 200, results, errors

    def _create(
        self, object_type: str, query: dict[str, str], inputs: list[dict[str, Any]], now: str
    ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        cleaned = [self._clean(object_type, raw) for raw in inputs]
        unique = self._unique.get(object_type)
        seen: set[str] = set()
        for inp in cleaned:
            key = inp.properties.get(unique) if unique else None
            if not key:
                continue
            existing = self._store.find(object_type, key)
            label = object_type.rstrip("s").replace("companie", "company").capitalize()
            if existing is not None:  # the whole request fails, naming only the first conflict
                raise _Rejected(
                    _error(409, f"{label} already exists. Existing ID: {existing.id}", "CONFLICT")
                )
            if key in seen:
                raise _Rejected(
                    _error(409, f"{label} already exists. Duplicate {unique} {key} in input", "CONFLICT")
                )
            seen.add(key)
        invalid = [self._invalid(object_type, inp) for inp in cleaned]
        first = next((e for e in invalid if e is not None), None)
        if first is not None and any(inp.trace is None for inp in cleaned):
            # HubSpot answers 207 for create only when each input has an objectWriteTraceId
            raise _Rejected(_error(400, first["message"], "VALIDATION_ERROR", errors=first["errors"]))
        results = []
        for inp, error in zip(cleaned, invalid, strict=True):
            if error is None:
                record = self._store.create(object_type, inp.properties, now)
                self._stats.created += 1
                results.append(self._result(object_type, record, inp, new=None))
        return 201, results, [e for e in invalid if e is not None]

    def _update(
        self, object_type: str, query: dict[str, str], inputs: list[dict[str, Any]], now: str
    ) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        props = [self._id_property(object_type, raw, query) for raw in inputs]
        cleaned = [self._clean(object_type, raw) for raw in inputs]
        keys = [
            (p, _normalize(p, i.id_value) if p and i.id_value else i.id_value)
            for i, p in zip(cleaned, props, strict=True)
        ]
        _reject_duplicates([str(k) for p, k in keys if k is not None])
        unique = self._unique.get(object_type)
        claimed: set[str] = set()
        results, errors = [], []
        for inp, (prop, key) in zip(cleaned, keys, strict=True):
            record = None
            if key is not None:
                record = self._store.find(object_type, key) if prop else self._store.get(object_type, key)
            if record is None or record.archived:
                type_name = object_type.upper().rstrip("S")
                message = f"Could not get some {type_name} objects, they may be deleted or not exist."
                errors.append(_item("OBJECT_NOT_FOUND", message, inp))
                continue
            error = self._invalid(object_type, inp)
            new_key = inp.properties.get(unique) if unique else None
            owner = self._store.find(object_type, new_key) if new_key else None
            if error is None and new_key and ((owner and owner.id != record.id) or new_key in claimed):
                message = (
                    f"{unique} {new_key} already belongs to another object. Existing ID: {owner and owner.id}"
                )
                error = _item("CONFLICT", message, inp)
            if error is not None:
                errors.append(error)
                continue
            if new_key:
                claimed.add(new_key)
            self._store.update(object_type, record, inp.properties, now)
            self._stats.updated += 1
            results.append(self._result(object_type, record, inp, new=None))
        return 200, results, errors

    def _read_one(self, object_type: str, object_id: str, query: dict[str, str]) -> _Response:
        prop = self._id_property(object_type, {}, query)
        if prop:
            record = self._store.find(object_type, _normalize(prop, object_id))
        else:
            record = self._store.get(object_type, object_id)
        if record is None or record.archived != (query.get("archived") == "true"):
            return _error(404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND")
        return _Response(200, record.api(object_type))

    def _read_page(self, object_type: str, query: dict[str, str]) -> _Response:
        try:
            limit = min(max(int(query.get("limit", "10")), 1), BATCH_LIMIT)
            after = int(query.get("after", "0"))
        except ValueError:
            return _error(400, "limit and after must be integers", "VALIDATION_ERROR")
        archived = query.get("archived") == "true"
        ids = self._store.order.get(object_type, [])
        records = self._store.records.get(object_type, {})
        page: list[dict[str, Any]] = []
        for oid in ids[bisect_left(ids, after) :]:
            if records[oid].archived != archived:
                continue
            if len(page) == limit:
                return _Response(200, {"results": page, "paging": {"next": {"after": str(oid)}}})
            page.append(records[oid].api(object_type))
        return _Response(200, {"results": page})


def _item(
    category: str, message: str, inp: _Input, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Return one per-record error as HubSpot lists it in a 207's ``errors``."""
    context: dict[str, list[str]] = {}
    if inp.id_value is not None:
        context["id"] = [inp.id_value]
    if inp.trace is not None:
        context["objectWriteTraceId"] = [inp.trace]
    details = details or [{"message": message, "error": category}]
    sub = details[0].get("error")
    item: dict[str, Any] = {
        "status": "error",
        "category": category,
        "subCategory": sub,
        "message": message,
        "context": context,
        "errors": [
            {"message": d.get("message", message), "code": d.get("error"), "in": d.get("name")}
            for d in details
        ],
    }
    if inp.trace is not None:
        item["objectWriteTraceId"] = inp.trace
    return item


def _reject_duplicates(keys: list[str]) -> None:
    # HubSpot refuses a batch in which two inputs name the same record, writing none of it
    dupes = sorted(k for k, n in Counter(keys).items() if n > 1)
    if dupes:
        message = f"Duplicate IDs found in batch input: {dupes}. IDs must be unique"
        raise _Rejected(_error(400, message, "VALIDATION_ERROR"))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a requests.Session reuses its connections
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the second 40 ms
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the demo and the tests tell their own story."""

    def do_GET(self) -> None:
        response = self.server.sandbox._handle(
            self.command, self.path, self.headers.get("Authorization"), self._read_body()
        )
        if response.reset:
            self._reset()
        else:
            self._send(response)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        # requests sends Content-Length for json= and data=; chunked bodies are not supported
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, response: _Response) -> None:
        data = b"" if response.body is None else json.dumps(response.body, separators=(",", ":")).encode()
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.status != 204:  # a 204 must carry neither a body nor a Content-Length
                self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up, e.g. while a timeout fault slept
            self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST: the client reads "connection reset by peer"
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler asleep in a timeout fault must not hold up stop()
    block_on_close = False
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], sandbox: HubSpotSandbox) -> None:
        super().__init__(address, _Handler)
        self.sandbox = sandbox

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up are normal here
            super().handle_error(request, client_address)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncback sandbox hubspot", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--port", type=int, default=8099, help="0 picks a free port")
    add("--host", default="127.0.0.1")
    add("--token", help="the only accepted bearer token (default: any)")
    add("--db", help="SQLite file that keeps objects across restarts (default: memory)")
    add("--requests-per-window", type=int, default=100, help="0 means no limit")
    add("--window-seconds", type=float, default=10.0)
    add("--daily-limit", type=int)
    add("--unique", action="append", default=[], metavar="TYPE=PROPERTY", help="unique property of a type")
    for name in ("429", "5xx", "423", "timeout", "reset"):
        add(f"--rate-{name}", type=float, default=0.0, help=f"fraction of batch writes answered with {name}")
    add("--timeout-seconds", type=float, default=5.0)
    add("--slow-rate", type=float, default=0.0)
    add("--slow-seconds", type=float, default=0.5)
    add("--retry-after-429", type=float, help="send Retry-After on injected 429s")
    add("--reject", action="append", default=[], metavar="VALUE", help="reject inputs holding VALUE (207)")
    add(
        "--fail-batch", action="append", default=[], metavar="VALUE", help="fail requests holding VALUE (400)"
    )
    add("--seed", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve a sandbox until SIGINT or SIGTERM; return the exit code."""
    args = _parser().parse_args(argv)
    faults = Faults(
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        rate_423=args.rate_423,
        rate_timeout=args.rate_timeout,
        rate_reset=args.rate_reset,
        timeout_seconds=args.timeout_seconds,
        slow_rate=args.slow_rate,
        slow_seconds=args.slow_seconds,
        retry_after_429=args.retry_after_429,
        reject_values=set(args.reject),
        fail_batch_values=set(args.fail_batch),
        seed=args.seed,
    )
    unique = dict(DEFAULT_UNIQUE_PROPERTIES)
    unique.update(pair.split("=", 1) for pair in args.unique)
    sandbox = HubSpotSandbox(
        port=args.port,
        host=args.host,
        token=args.token,
        requests_per_window=args.requests_per_window or None,
        window_seconds=args.window_seconds,
        daily_limit=args.daily_limit,
        db_path=args.db,
        faults=faults,
        unique_properties=unique,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    with sandbox:
        print(f"HubSpot sandbox listening on {sandbox.url}", flush=True)
        while not stopping.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
