"""An HTTP/1.1 server on 127.0.0.1 for a vendor fake: every request goes to ``answer``."""

from __future__ import annotations

import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

#: status, headers, body
Answer = tuple[int, dict[str, str], bytes]


class FixedWindow:
    """A rate limit counted in fixed windows of ``window_s`` seconds and told in
    ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (epoch seconds, rounded up), as Braze and
    Intercom answer. ``limit`` None refuses nothing, and the headers show ``shown``. Callers hold
    their fake's lock."""

    def __init__(self, limit: int | None, window_s: float, shown: int) -> None:
        self.limit, self.window_s, self.shown = limit, window_s, shown
        self._window = (0.0, 0)  # the current window's start, and the requests counted in it

    def take(self) -> bool:
        """Count a request; return False (count nothing) when the window is used up."""
        start, used = self._current()
        if self.limit is not None and used >= self.limit:
            return False
        self._window = (start, used + 1)
        return True

    def headers(self, remaining: int | None = None) -> dict[str, str]:
        start, used = self._current()
        limit = self.limit or self.shown
        left = max(0, limit - used) if remaining is None else remaining
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(left),
            "X-RateLimit-Reset": str(math.ceil(start + self.window_s)),
        }

    def _current(self) -> tuple[float, int]:
        start = math.floor(time.time() / self.window_s) * self.window_s
        if self._window[0] != start:
            self._window = (start, 0)
        return self._window


class LoopbackServer:
    """Serves on a free loopback port in a thread; subclasses answer requests in ``answer``."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    timeout = 10  # idle keep-alive connections close, so stopped servers leave no threads
    # headers and body go out in two writes: without this, Nagle's algorithm holds the body until
    # the client's delayed ACK (40 ms on Linux), as no real server's answer is held
    disable_nagle_algorithm = True
    server: _Server

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, out, payload = self.server.owner.answer(self.command, self.path, headers, body)
        try:
            self.send_response(status)
            for name, value in out.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass
