"""A webhook receiver on loopback that behaves as the Standard Webhooks spec tells a receiver to.

It verifies requests with the ``standardwebhooks`` reference library itself (the signature, and
timestamps within its five-minute tolerance), and treats ``webhook-id`` as an idempotency key, as
the spec tells receivers to. It speaks our receiver contract: 200 with ``{"accepted": n,
"rejected": [{"key", "reason"}]}``, and ``held()`` is what a receiver applying each accepted
record (upsert: store its fields; archive: drop it) holds.

Fault knobs: ``fail_next`` (answer the next requests with a status), ``reject_keys`` and
``reject_values`` (reject those records in a 200), ``reject_batch_if_key_in`` (400 for the whole
request), ``delay_s`` (answer late) and ``random_faults``. ``FAKE`` is its view for the contract
suites. A test fake: production code never imports it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import requests
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.fakes.contract import Fake, RandomFaults

Answer = tuple[int, dict[str, str], bytes]
SECRET = "whsec_c3luY2JhY2stY29udHJhY3Qta2V5LTMyYnl0ZXM="


class WebhookReceiver:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records the batches it accepts."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        #: parsed bodies of the requests answered 2xx (partial rejections included)
        self.received: list[dict[str, Any]] = []
        #: raw bodies and headers of those requests, in the same order
        self.raw_bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        #: every request that reached the server, whatever the answer
        self.requests = 0
        #: TCP connections accepted: fewer than requests when the client keeps them alive
        self.connections = 0
        self.reject_keys: set[str] = set()
        #: records holding one of these values (in lower case) in a field are rejected too
        self.reject_values: set[str] = set()
        #: random 429s, 5xx and answers too late (after storing)
        self.random_faults: RandomFaults | None = None
        self.late_s = 2.5
        #: every key an accepted upsert ever held
        self.first_seen: set[str] = set()
        self.reject_reason = "refused by the test receiver"
        self.reject_batch_if_key_in: set[str] = set()
        #: seconds to wait before answering (for client timeouts)
        self.delay_s = 0.0
        self._faults: deque[Answer] = deque()
        self._answers: list[set[str]] = []  # the keys rejected in each accepted request
        self._library = Webhook(secret) if secret is not None else None
        self._answered_ids: dict[str, Answer] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/syncback"

    def fail_next(
        self, status: int, n: int = 1, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> None:
        """Answer the next ``n`` requests with ``status`` (before any signature check, like a proxy)."""
        default = json.dumps({"error": f"test receiver answers {status}"}).encode()
        with self._lock:
            self._faults.extend([(status, dict(headers or {}), default if body is None else body)] * n)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()  # waits up to serve_forever's poll interval
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- one request -------------------------------------------------------------------------

    def answer(self, headers: dict[str, str], body: bytes) -> Answer:
        """Return the status, headers and body this receiver answers a POST with."""
        with self._lock:
            self.requests += 1
            if self._faults:
                return self._faults.popleft()
            fault = self.random_faults.draw() if self.random_faults else None
        if fault in ("429", "5xx"):
            status = 429 if fault == "429" else 503
            return _json_answer(status, {"error": f"test receiver answers {status}"})
        if self.delay_s:
            time.sleep(self.delay_s)
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _json_answer(415, {"error": "expected Content-Type: application/json"})
        if self.secret is not None and not self._verified(headers, body):
            return _json_answer(401, {"error": "invalid webhook signature"})
        msg_id = headers.get("webhook-id")
        with self._lock:
            if msg_id in self._answered_ids:  # the spec: webhook-id is an idempotency key
                return self._answered_ids[msg_id]
        try:
            payload = json.loads(body.decode("utf-8"))
            records = payload["records"]
            keys = [str(r["key"]) for r in records]
            if not isinstance(payload["sync"], str) or any(
                r["action"] not in ("upsert", "archive") for r in records
            ):
                raise ValueError("bad sync or action")
        except (ValueError, KeyError, TypeError) as exc:
            return _json_answer(400, {"error": f"malformed batch: {type(exc).__name__}"})
        if self.reject_batch_if_key_in.intersection(keys):
            return _json_answer(400, {"error": "batch refused: it holds a record this receiver refuses"})
        rejected = [
            {"key": str(r["key"]), "reason": self.reject_reason.format(fields=json.dumps(r.get("fields")))}
            for r in records
            if str(r["key"]) in self.reject_keys or self._holds_rejected_value(r)
        ]
        answer = _json_answer(200, {"accepted": len(records) - len(rejected), "rejected": rejected})
        with self._lock:
            self.received.append(payload)
            self._answers.append({r["key"] for r in rejected})
            self.raw_bodies.append(body)
            self.headers.append(headers)
            if msg_id:
                self._answered_ids[msg_id] = answer
            refused = {r["key"] for r in rejected}
            self.first_seen |= {str(r["key"]) for r in records if r["action"] == "upsert"} - refused
        if fault == "late":  # stored, and answered after the client gave up
            time.sleep(self.late_s)
        return answer

    def _holds_rejected_value(self, record: dict[str, Any]) -> bool:
        fields = record.get("fields") or {}
        return any(v is not None and str(v).lower() in self.reject_values for v in fields.values())

    def _verified(self, headers: dict[str, str], body: bytes) -> bool:
        assert self.secret is not None
        try:
            self._library.verify(body, headers)
        except (WebhookVerificationError, ValueError):
            return False
        return True

    def held(self) -> dict[str, dict[str, Any]]:
        """Return what the receiver holds by key, having applied every accepted record in order."""
        with self._lock:
            bodies = list(self.received)
            answers = list(self._answers)
        state: dict[str, dict[str, Any]] = {}
        for body, rejected in zip(bodies, answers, strict=True):
            for record in body["records"]:
                if record["key"] in rejected:
                    continue
                if record["action"] == "archive":
                    state.pop(record["key"], None)
                else:
                    state[record["key"]] = record["fields"]
        return state


def _json_answer(status: int, body: dict[str, Any]) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that timed out and hung up is expected here, not a failure to print
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body in one go, as real servers send them
    timeout = 10  # close idle keep-alive connections so stopped receivers leave no threads behind
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.receiver._lock:
            self.server.receiver.connections += 1

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None or self.headers.get("Transfer-Encoding"):
            self._send(_json_answer(411, {"error": "Content-Length required"}))
            self.close_connection = True
            return
        body = self.rfile.read(int(length))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self._send(self.server.receiver.answer(headers, body))

    def _send(self, answer: Answer) -> None:
        status, headers, body = answer
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client gave up waiting

    def log_message(self, format: str, *args: Any) -> None:
        pass


# ---- the contract suites' view ------------------------------------------------------------------


class WebhookFake(Fake):
    """The receiver as the contract suites drive it: records by the model's key, values as JSON."""

    name = "webhook"
    env = {"CONTRACT_WEBHOOK_SECRET": SECRET}
    deletes_by_hand = False  # a receiver keeps what it is sent; syncback holds no id of it

    def __init__(self) -> None:
        self.receiver = WebhookReceiver(secret=SECRET)

    def __enter__(self) -> WebhookFake:
        self.receiver.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.receiver.stop()

    def destination(self) -> dict[str, Any]:
        return {
            "type": "webhook",
            "url": self.receiver.url,
            "secret": "env:CONTRACT_WEBHOOK_SECRET",
            "batch_size": 3,
            "timeout_s": 2,
        }

    def records(self) -> list[dict[str, Any]]:
        return [{"id": key, **fields} for key, fields in self.receiver.held().items()]

    def reject(self, values: set[str]) -> None:
        self.receiver.reject_values = {v.lower() for v in values}

    def inject(self, rate_429: float, rate_5xx: float, rate_timeout: float, seed: int) -> None:
        self.receiver.random_faults = RandomFaults(rate_429, rate_5xx, rate_timeout, seed)

    def created(self) -> int:
        return len(self.receiver.first_seen)

    def injected(self) -> int:
        return self.receiver.random_faults.struck if self.receiver.random_faults else 0

    def writes(self, request: requests.PreparedRequest) -> bool:
        return True

    def lost(
        self, request: requests.PreparedRequest, response: requests.Response, before: set[str]
    ) -> set[str]:
        # the receiver holds these records; syncback never learns it
        return {r["key"] for r in json.loads(request.body or b"{}").get("records", [])}


FAKE = WebhookFake
