"""The sandbox on loopback: ``HubSpotSandbox`` ties HTTP, access, faults and the CRM rules together."""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .access import _bearer, _RateLimits, _refuse
from .faults import Faults, _draw, _fault_response
from .responses import _error, _Rejected, _Response
from .rules import _BATCH, _TYPE_IDS, DEFAULT_UNIQUE_PROPERTIES, _CrmApi
from .stats import _Stats
from .store import _Store


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
        known_properties: dict[str, set[str]] | None = None,
    ) -> None:
        self.host, self.port, self.token = host, port, token
        self.url = ""
        unique = dict(DEFAULT_UNIQUE_PROPERTIES if unique_properties is None else unique_properties)
        self._lock = threading.Lock()
        self._store = _Store(unique, db_path)
        self._limits = _RateLimits(requests_per_window, window_seconds, daily_limit)
        faults = faults or Faults()
        # by object type, the properties that exist (HubSpot refuses others: PROPERTY_DOESNT_EXIST);
        # None: every name is taken as a property that exists
        self._api = _CrmApi(self._store, unique, faults, known_properties)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.set_faults(faults)

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
            self._api.faults = faults
            self._rng = random.Random(faults.seed)

    def faults(self) -> Faults:
        return self._api.faults

    def objects(self, object_type: str, include_archived: bool = False) -> list[dict[str, Any]]:
        object_type = _TYPE_IDS.get(object_type, object_type)
        with self._lock:
            records = self._store.records.get(object_type, {}).values()
            return [r.public() for r in records if include_archived or not r.archived]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._api.stats.to_json()

    def reset(self) -> None:
        """Forget objects, stats, rate-limit windows and the daily count (SQLite rows too)."""
        with self._lock:
            self._store.clear()
            self._api.stats = _Stats()
            self._limits.clear()

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
            self._api.stats.requests += 1
            if not response.reset:
                self._api.stats.by_status[str(response.status)] += 1
        if sleep_after:
            time.sleep(sleep_after)
        return response

    def _crm(
        self, method: str, path: str, query: dict[str, str], authorization: str | None, body: bytes
    ) -> tuple[_Response, float]:
        """Return the answer to a /crm request and how long to sleep before sending it."""
        token = _bearer(authorization)
        write = method == "POST" and _BATCH.match(path) is not None
        with self._lock:
            refused = _refuse(token, self.token)
            if refused is not None:
                return refused, 0.0
            limited, headers = self._admit(token)
            if limited is not None:
                limited.headers.update(headers)
                return limited, 0.0
            faults = self._api.faults
            fault, slow = _draw(faults, self._rng, write)
            if fault is not None:
                self._api.stats.injected[fault] += 1
            if slow:
                self._api.stats.injected["slow"] += 1
        if fault not in (None, "timeout"):
            response = _fault_response(fault, faults, self._rng, self._lock)
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
        limited, headers = self._limits.admit(token)
        if limited is not None:
            self._api.stats.rate_limited += 1
        return limited, headers

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

    # ---- the CRM API, called with the lock held; bench/sandbox_plus.py extends _route ----------------

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> _Response:
        return self._api.route(method, path, query, body)

    def _object_type(self, name: str) -> str:
        return self._api.object_type(name)

    def _batch(self, action: str, object_type: str, query: dict[str, str], payload: Any) -> _Response:
        return self._api.batch(action, object_type, query, payload)


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
