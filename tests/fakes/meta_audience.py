"""A Meta Custom Audience on loopback, as the Marketing API documents ``/{audience_id}/users`` (a test
fake: production code never imports it).

- ``POST /{version}/{audience_id}/users`` adds, ``DELETE`` of the same path removes, with
  ``{"payload": {"schema": [...], "data": [[...], ...]}}`` (a JSON body; ``payload`` may also be a
  JSON string, as in a form). ``schema`` is a list of Meta's keys (or one key); every row holds
  one value per key, "" where unknown. At most ``max_rows`` (10,000) rows, else code 100.
- A hashed key's value must be "" or SHA-256 as 64 lower-case hex; a row with no key at all, or a
  bad hash, or one of ``reject_values`` (hashed as syncback would) is an invalid entry: not applied,
  counted in ``num_invalid_entries``, and, up to ``max_samples`` of them, named in
  ``invalid_entry_samples`` by the row's first non-empty value, with a reason. The other rows apply.
  ``reject_values`` refuse adds only: a removal's entries are checked for their form alone.
  The answer is ``{"audience_id", "session_id", "num_received", "num_invalid_entries",
  "invalid_entry_samples"}`` with HTTP 200.
- Meta matches people by their keys; this audience keeps a member by its first of EMAIL, PHONE and
  EXTERN_ID (adding one again updates it, creating nothing), and a removal takes out the member any
  key of its row names. ``LOOKALIKE_VALUE`` is kept as sent (the docs we read do not say how a bad
  one is answered).
- ``Authorization: Bearer <token>``, else code 190 (HTTP 400, ``OAuthException``); another
  audience: code 100, subcode 33; an unknown version: code 2635; a flagged audience
  (``flagged``): code 100, subcode 1713230, as the reference shows; ``requests_per_window`` per
  fixed window of ``window_s`` s, then code 80003 (HTTP 400) with ``X-Business-Use-Case-Usage``.

Fault knobs: ``reject_values``, ``fail_next``, random throttles (code 17), 500s (code 2,
``is_transient``) and answers too late (after the work). ``FAKE`` is its view for the contract suites.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
import threading
import time
import uuid
from collections import deque
from functools import cache
from typing import Any

import requests

from tests.fakes.contract import Knobs, RandomFaults
from tests.fakes.loopback import Answer, LoopbackServer

TOKEN = "EAAB-contract-meta-token"
AUDIENCE = "23851234567890123"
ACCOUNT = "act_1234567890"
MAX_ROWS = 10_000
HASHED = (
    "EMAIL",
    "PHONE",
    "EXTERN_ID",
    "FN",
    "LN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "COUNTRY",
    "GEN",
    "DOBY",
    "DOBM",
)
HASHED += ("DOBD",)
KEYS = (*HASHED, "MADID", "LOOKALIKE_VALUE")
MATCH = ("EMAIL", "PHONE", "EXTERN_ID")
_HEX = re.compile(r"^[0-9a-f]{64}$")
#: the generic fields the contract suites map, as Meta's keys
GENERIC = {
    "email": "EMAIL",
    "customer_id": "EXTERN_ID",
    "firstname": "FN",
    "lead_score": "LOOKALIKE_VALUE",
    "score": "LOOKALIKE_VALUE",
}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def email_hash(value: Any) -> str:
    """Return the hash syncback sends of an address: white space removed, lower case."""
    return sha256("".join(str(value).split()).lower())


def text_hash(value: Any) -> str:
    return sha256(str(value).strip().lower())


def name_hash(value: Any) -> str:
    """Return the hash syncback sends of a first or last name: punctuation removed, trimmed, lower case."""
    return sha256(str(value).translate(_NO_PUNCTUATION).strip().lower())


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)  # POSIX [[:punct:]]: ASCII only


@cache
def _extern_ids() -> dict[str, int]:
    # the suites key rows by small integers; a test view recovers them as a dictionary attack would
    return {text_hash(i): i for i in range(0, 20_000)}


class MetaAudienceFake(LoopbackServer, Knobs):
    """One customer-list Custom Audience, and its view for the contract suites."""

    name = "meta_audience"
    env = {"CONTRACT_META_TOKEN": TOKEN}
    identifier = "email"
    #: a member someone else uploaded cannot be told apart from the sync's (Meta answers counts)
    by_hand = False
    deletes_by_hand = False

    def __init__(
        self,
        requests_per_window: int | None = None,
        window_s: float = 1.0,
        max_rows: int = MAX_ROWS,
        max_samples: int = 10,
    ) -> None:
        self.requests_per_window = requests_per_window
        self.window_s = window_s
        self.max_rows = max_rows
        self.max_samples = max_samples
        self.flagged = False
        #: members by their match hash: their keys as sent
        self.members: dict[str, dict[str, Any]] = {}
        #: every method and payload that reached the audience (after the token and the limit)
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.reject_values: set[str] = set()
        self.random_faults: RandomFaults | None = None
        self.late_s = 2.5
        self.counts = {"requests": 0, "created": 0, "429": 0, "add": 0, "remove": 0, "removed": 0}
        self._next: deque[Answer] = deque()
        self._window = (0.0, 0)
        self._lock = threading.Lock()
        super().__init__()

    def fail_next(
        self, status: int, body: dict[str, Any], n: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``n`` requests with ``status`` and ``body`` (after the token is checked)."""
        with self._lock:
            self._next.extend([_json(status, body, headers)] * n)

    def reject(self, values: set[str]) -> None:
        # Meta sees hashes only: refuse the rows holding the hash of a value, hashed either way
        self.reject_values = {
            h for v in values if v.strip() for h in (email_hash(v), text_hash(v), name_hash(v))
        }

    # ---- one request ---------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        path = target.split("?", 1)[0].strip("/").split("/")
        with self._lock:
            self.counts["requests"] += 1
            if headers.get("authorization", "") != f"Bearer {TOKEN}":
                return _error(
                    400, 190, "Invalid OAuth access token - Cannot parse access token", "OAuthException"
                )
            if len(path) != 3 or path[2] != "users" or method not in ("POST", "DELETE"):
                return _error(400, 2500, "Unknown path components", "OAuthException")
            if not re.fullmatch(r"v[0-9]+\.0", path[0]):
                return _error(400, 2635, f"Unknown or deprecated API version {path[0]}", "OAuthException")
            if path[1] != AUDIENCE:
                return _error(
                    400,
                    100,
                    f"Unsupported post request. Object with ID '{path[1]}' does not exist, cannot be loaded "
                    "due to missing permissions, or does not support this operation.",
                    subcode=33,
                )
            limited = self._rate_limited()
            if limited is not None:
                return limited
            if self._next:
                return self._next.popleft()
            if self.flagged:
                return _error(
                    400,
                    100,
                    "Invalid parameter",
                    subcode=1713230,
                    user_msg="Before updating user memberships, you must resolve integrity restrictions on "
                    "this Data File Custom Audience.",
                )
            fault = self.random_faults.draw() if self.random_faults else None
            if fault == "429":
                self.counts["429"] += 1
                return _error(400, 17, "User request limit reached", subcode=2446079, headers=_usage(0))
            if fault == "5xx":
                return _error(500, 2, "Service temporarily unavailable", transient=True)
            payload = _payload(body)
            if isinstance(payload, str):
                return _error(400, 100, f"Invalid parameter: {payload}")
            if len(payload["data"]) > self.max_rows:
                return _error(400, 100, f"Invalid parameter: at most {self.max_rows} users a request")
            self.received.append((method, payload))
            answer = self._apply(method == "POST", payload["schema"], payload["data"])
        if fault == "late":  # done, and answered after the client gave up
            time.sleep(self.late_s)
        return answer

    def _apply(self, adding: bool, schema: list[str], data: list[list[Any]]) -> Answer:
        self.counts["add" if adding else "remove"] += 1
        invalid, samples = 0, {}
        for row in data:
            entry = dict(zip(schema, row, strict=True))
            why = self._invalid(entry, adding)
            if why is not None:
                invalid += 1
                named = next((str(v) for v in row if v not in ("", None)), "")
                if len(samples) < self.max_samples and named:
                    samples[named] = why
                continue
            if adding:
                self._add(entry)
            else:
                self._remove(entry)
        return _json(
            200,
            {
                "audience_id": AUDIENCE,
                "session_id": str(uuid.uuid4().int % 10**18),
                "num_received": len(data),
                "num_invalid_entries": invalid,
                "invalid_entry_samples": samples,
            },
        )

    def _invalid(self, entry: dict[str, Any], adding: bool) -> str | None:
        hashes = [str(v) for k, v in entry.items() if k in HASHED and v not in ("", None)]
        if not any(entry.get(k) not in ("", None) for k in (*MATCH, "MADID")) and not hashes:
            return "No matchable key in the row"
        if any(not _HEX.match(h) for h in hashes):
            return "Invalid hash: keys must be SHA-256 of the normalised value, as lower-case hex"
        # refusals by content are of uploads: Meta validates a removal's entries by their form only
        if adding and any(h in self.reject_values for h in hashes):
            return "Entry refused"
        return None

    def _add(self, entry: dict[str, Any]) -> None:
        match = next((entry[k] for k in MATCH if entry.get(k)), None)
        if match is None:
            return  # matched by other keys only: a person this view does not keep
        if match not in self.members:
            self.counts["created"] += 1
        self.members[match] = entry

    def _remove(self, entry: dict[str, Any]) -> None:
        for key, value in entry.items():
            if key in MATCH and value:
                gone = [m for m, member in self.members.items() if member.get(key) == value]
                for m in gone:
                    del self.members[m]
                    self.counts["removed"] += 1

    # ---- around the work -----------------------------------------------------------------------

    def _rate_limited(self) -> Answer | None:
        now = time.time()
        start = math.floor(now / self.window_s) * self.window_s
        if self._window[0] != start:
            self._window = (start, 0)
        used = self._window[1]
        if self.requests_per_window is not None and used >= self.requests_per_window:
            self.counts["429"] += 1
            return _error(
                400,
                80003,
                "There have been too many calls to this ad-account. Wait a bit and try again.",
                subcode=2446079,
                headers=_usage(0),
            )
        self._window = (start, used + 1)
        return None

    # ---- the contract suites' view -------------------------------------------------------------

    def destination(self) -> dict[str, Any]:
        return {
            "type": "meta_audience",
            "audience_id": AUDIENCE,
            "access_token": "env:CONTRACT_META_TOKEN",
            "base_url": self.url,
            "rate_limit": {"requests": 10_000, "per_seconds": 1},
            "timeout_s": 2,
        }

    def mapping(self, generic: dict[str, Any], key_column: str) -> dict[str, Any]:
        # Meta keeps only its keys: the other generic fields have nowhere to go
        return {GENERIC[name]: entry for name, entry in generic.items() if name in GENERIC}

    def stored(self, field: str, value: Any) -> Any:
        if field not in GENERIC:
            return None
        if value is None or field == "customer_id" or GENERIC[field] == "LOOKALIKE_VALUE":
            return value
        text = str(value)
        if _HEX.match(text):  # already as the audience holds it
            return text
        hashed = (
            email_hash(text)
            if field == "email"
            else name_hash(text)
            if GENERIC[field] in ("FN", "LN")
            else text_hash(text)
        )
        return None if hashed in (email_hash(""), text_hash("")) else hashed

    def identity(self, value: Any) -> str:
        return "" if value is None or not str(value).strip() else str(self.stored("email", value))

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            members = list(self.members.items())
        out = []
        for match, entry in members:
            value = entry.get("LOOKALIKE_VALUE")
            record: dict[str, Any] = {name: None for name in ("last_seen", "source", "score_text", "big")}
            record.update(
                {
                    "id": match,
                    "customer_id": _extern_ids().get(entry.get("EXTERN_ID") or ""),
                    "email": entry.get("EMAIL") or None,
                    "firstname": entry.get("FN") or None,
                    "lead_score": None if value == "" else value,
                    "score": None if value == "" else value,
                }
            )
            out.append(record)
        return out

    def writes(self, request: requests.PreparedRequest) -> bool:
        return (request.path_url or "").endswith("/users")


def _payload(body: bytes) -> dict[str, Any] | str:
    """Return ``{"schema": [...], "data": [[...]]}`` from a request body, or what is wrong with it."""
    try:
        outer = json.loads(body)
        payload = outer["payload"]
        if isinstance(payload, str):
            payload = json.loads(payload)
    except (ValueError, KeyError, TypeError):
        return "(#100) The parameter payload is required"
    schema = payload.get("schema") if isinstance(payload, dict) else None
    schema = [schema] if isinstance(schema, str) else schema
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(schema, list) or not schema or any(k not in KEYS for k in schema):
        return f"(#100) schema must be one or more of {', '.join(KEYS)}"
    if not isinstance(data, list):
        return "(#100) data must be a list"
    if len(schema) == 1:
        data = [row if isinstance(row, list) else [row] for row in data]
    if any(not isinstance(row, list) or len(row) != len(schema) for row in data):
        return "(#100) every row of data holds one value per schema key"
    return {"schema": schema, "data": data}


def _usage(minutes: int) -> dict[str, str]:
    entry = {"type": "custom_audience", "call_count": 100, "total_cputime": 10, "total_time": 10}
    return {
        "x-business-use-case-usage": json.dumps(
            {ACCOUNT[4:]: [{**entry, "estimated_time_to_regain_access": minutes}]}
        )
    }


def _error(
    status: int,
    code: int,
    message: str,
    kind: str = "OAuthException",
    subcode: int | None = None,
    transient: bool = False,
    user_msg: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    error: dict[str, Any] = {
        "message": message,
        "type": kind,
        "code": code,
        "fbtrace_id": uuid.uuid4().hex[:11],
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    if transient:
        error["is_transient"] = True
    if user_msg is not None:
        error["error_user_title"], error["error_user_msg"] = "Audience Upload Blocked", user_msg
    return _json(status, {"error": error}, headers)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
    return status, {"content-type": "application/json", **(headers or {})}, json.dumps(body).encode()


FAKE = MetaAudienceFake
