"""A Mailchimp Marketing API audience on loopback, as Mailchimp documents it (a test fake: production
code never imports it).

- ``POST /3.0/lists/{list_id}``: ``{"members": [...], "update_existing": bool}``, at most 500 (more is
  a 400); each member needs ``email_address`` and ``status``. Answers 200 with ``new_members``,
  ``updated_members`` and ``errors`` (``email_address``, ``error``, ``error_code``): an address that
  is not one, one permanently deleted ("forgotten": it cannot be re-imported), one already a member
  without ``update_existing`` (``ERROR_CONTACT_EXISTS``), and, with it, an unsubscribed or cleaned
  member asked to be subscribed or pending (in a compliance state: refused);
- ``PUT .../members/{hash}`` (an upsert: ``status_if_new`` when it creates, ``status`` only if sent),
  ``PATCH .../members/{hash}`` (404 if not a member; a new ``email_address`` moves the member, 400 if
  the address is another member's), ``DELETE .../members/{hash}`` (archives: 204),
  ``POST .../members/{hash}/tags`` (``[{"name", "status": active|inactive}]``: 204),
  ``POST .../members/{hash}/actions/delete-permanent`` (the address is forgotten), ``GET .../members/{hash}``;
- the hash is the MD5 of the lower-cased address, and it is the member's ``id``: a moved member's
  id is its new address's hash;
- an archived member is not a member (GET, PATCH, DELETE: 404) until it is added again; added again,
  it keeps an unsubscribed or cleaned status (this fake's choice: the reference does not say);
- HTTP Basic with any user and the API key, else 401; another list id is 404; every whole-request
  error is ``application/problem+json`` (``type``, ``title``, ``status``, ``detail``, ``instance``);
- at most ``max_connections`` (10) requests under way at once: one more is a 429.

Fault knobs: ``reject_values`` (a member holding one is refused: in ``errors``, or a 400 for one
member), random 429s, 503s and answers too late (after the work), ``bare_403`` (that share of
requests answered 403 with no body: the throttle as a secondary source saw it), ``latency_s``.
``FAKE`` is its view for the contract suites.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.fakes.contract import Knobs, RandomFaults
from tests.fakes.loopback import Answer, LoopbackServer

KEY, LIST = "0123456789abcdef0123456789abcdef-us6", "a1b2c3d4e5"
MAX_MEMBERS = 500
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional")
#: the merge tag of each generic field the contract suites map
TAGS = {
    "customer_id": "CUSTID",
    "firstname": "FNAME",
    "score": "SCORE",
    "big": "BIG",
    "lead_score": "LSCORE",
    "last_seen": "LASTSEEN",
    "source": "SOURCE",
    "score_text": "SCORETXT",
}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()


class MailchimpFake(LoopbackServer, Knobs):
    """One Mailchimp audience, and its view for the contract suites."""

    name = "mailchimp"
    identifier = "email"
    env = {"CONTRACT_MAILCHIMP_KEY": KEY}
    by_hand = True

    def __init__(self, max_connections: int = 10, latency_s: float = 0.0) -> None:
        self.max_connections = max_connections
        self.latency_s = latency_s
        #: members by subscriber hash, archived ones too
        self.members: dict[str, dict[str, Any]] = {}
        self.forgotten: set[str] = set()
        self.reject_values: set[str] = set()
        self.random_faults: RandomFaults | None = None
        self.bare_403 = 0.0
        self.late_s = 2.5
        self.requests_seen: list[tuple[str, str, Any]] = []
        self.counts = {
            "requests": 0,
            "created": 0,
            "429": 0,
            "batches": 0,
            "most_connections": 0,
            "compliance": 0,
        }
        self._under_way = 0
        self._lock = threading.Lock()
        super().__init__()

    # ---- one request ---------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        with self._lock:
            self.counts["requests"] += 1
            self._under_way += 1
            self.counts["most_connections"] = max(self.counts["most_connections"], self._under_way)
            crowded = self._under_way > self.max_connections
        try:
            if crowded:  # refused at once, as one connection too many
                with self._lock:
                    self.counts["429"] += 1
                return _problem(
                    429, "Too Many Requests", "You have exceeded the limit of 10 simultaneous connections."
                )
            if self.latency_s:
                time.sleep(self.latency_s)
            with self._lock:
                if not self._authorised(headers.get("authorization", "")):
                    return _problem(
                        401,
                        "API Key Invalid",
                        "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
                    )
                if self.bare_403 and random.random() < self.bare_403:
                    return 403, {}, b""
                fault = self.random_faults.draw() if self.random_faults else None
                if fault == "429":
                    self.counts["429"] += 1
                    return _problem(429, "Too Many Requests", "test fake answers 429")
                if fault == "5xx":
                    return _problem(503, "Service Unavailable", "test fake answers 503")
                try:
                    payload = json.loads(body) if body else {}
                except ValueError:
                    return _problem(
                        400, "JSON Parse Error", "We encountered an unspecified JSON parsing error."
                    )
                self.requests_seen.append((method, urlsplit(target).path, payload))
                answer = self._route(method, urlsplit(target).path, payload)
            if fault == "late":  # done, and answered after the client gave up
                time.sleep(self.late_s)
            return answer
        finally:
            with self._lock:
                self._under_way -= 1

    def _route(self, method: str, path: str, body: Any) -> Answer:
        parts = path.strip("/").split("/")
        if parts[:2] != ["3.0", "lists"] or len(parts) < 3 or parts[2] != LIST:
            return _problem(404, "Resource Not Found", "The requested resource could not be found.")
        rest = parts[3:]
        if not rest and method == "POST":
            return self._batch(body)
        if len(rest) >= 2 and rest[0] == "members":
            hashed, action = rest[1], "/".join(rest[2:])
            handlers = {
                ("GET", ""): self._get,
                ("PUT", ""): self._put,
                ("PATCH", ""): self._patch,
                ("DELETE", ""): self._archive,
                ("POST", "tags"): self._tag,
                ("POST", "actions/delete-permanent"): self._delete_permanent,
            }
            handler = handlers.get((method, action))
            if handler is not None:
                return handler(hashed, body if isinstance(body, dict) else {})
        return _problem(404, "Resource Not Found", "The requested resource could not be found.")

    # ---- batch subscribe -----------------------------------------------------------------------

    def _batch(self, body: Any) -> Answer:
        members = body.get("members") if isinstance(body, dict) else None
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            return _problem(400, "Invalid Resource", "The resource submitted could not be validated.")
        if len(members) > MAX_MEMBERS:
            return _problem(
                400, "Invalid Resource", f"members: up to {MAX_MEMBERS} members may be added a call"
            )
        update = bool(body.get("update_existing"))
        self.counts["batches"] += 1
        new, updated, errors = [], [], []
        for item in members:
            email = str(item.get("email_address") or "").strip()

            def fail(message: str, code: str = "ERROR_GENERIC", address: str = email) -> None:
                errors.append(
                    {
                        "email_address": address,
                        "error": message,
                        "error_code": code,
                        "field": "",
                        "field_message": "",
                    }
                )

            held = self.members.get(subscriber_hash(email))
            if held is not None and not held["archived"] and not update:
                # left untouched, whatever its fields
                fail(
                    f"{email} is already a list member. Use PUT to insert or update list members.",
                    "ERROR_CONTACT_EXISTS",
                )
                continue
            refused = self._refused(email, item)
            if refused is not None:
                fail(refused)
                continue
            status = item.get("status")
            if status not in STATUSES:
                fail("Status: this value is required, one of " + ", ".join(STATUSES))
                continue
            if held is not None and not held["archived"]:
                if not self._may_become(held, status):
                    fail(self._compliance(email))
                    continue
                held["status"] = status
                self._apply(held, item)
                updated.append(self._view(held))
                continue
            created = self._add(email, status, item)
            new.append(self._view(created))
        document = {
            "new_members": new,
            "updated_members": updated,
            "errors": errors,
            "total_created": len(new),
            "total_updated": len(updated),
            "error_count": len(errors),
            "_links": [],
        }
        return _json(200, document)

    # ---- one member ----------------------------------------------------------------------------

    def _get(self, hashed: str, body: dict[str, Any]) -> Answer:
        held = self._live(hashed)
        return _json(200, self._view(held)) if held else _not_found()

    def _put(self, hashed: str, body: dict[str, Any]) -> Answer:
        email = str(body.get("email_address") or "").strip()
        if subscriber_hash(email) != hashed:
            return _problem(400, "Invalid Resource", "The email address does not match the subscriber hash.")
        refused = self._refused(email, body)
        if refused is not None:
            return _problem(400, "Invalid Resource", refused)
        held = self._live(hashed)
        if held is None:
            status = body.get("status") or body.get("status_if_new")
            if status not in STATUSES:
                return _problem(400, "Invalid Resource", "status_if_new: required for a new member")
            return _json(200, self._view(self._add(email, status, body)))
        status = body.get("status")
        if status is not None:
            if status not in STATUSES or not self._may_become(held, status):
                return _problem(400, "Member In Compliance State", self._compliance(email))
            held["status"] = status
        self._apply(held, body)
        return _json(200, self._view(held))

    def _patch(self, hashed: str, body: dict[str, Any]) -> Answer:
        held = self._live(hashed)
        if held is None:
            return _not_found()
        email = str(body.get("email_address") or held["email_address"]).strip()
        refused = self._refused(email, body)
        if refused is not None:
            return _problem(400, "Invalid Resource", refused)
        moved = subscriber_hash(email)
        if moved != hashed:
            other = self.members.get(moved)
            if other is not None and not other["archived"]:
                return _problem(400, "Member Exists", f"{email} is already a list member.")
        status = body.get("status")
        if status is not None:
            if status not in STATUSES or not self._may_become(held, status):
                return _problem(400, "Member In Compliance State", self._compliance(email))
            held["status"] = status
        if moved != hashed:  # the member, its status with it, now answers to its new address
            del self.members[hashed]
            held["id"], held["email_address"] = moved, email
            self.members[moved] = held
        self._apply(held, body)
        return _json(200, self._view(held))

    def _archive(self, hashed: str, body: dict[str, Any]) -> Answer:
        held = self._live(hashed)
        if held is None:
            return _not_found()
        held["archived"] = True
        return 204, {}, b""

    def _tag(self, hashed: str, body: dict[str, Any]) -> Answer:
        held = self._live(hashed)
        if held is None:
            return _not_found()
        for tag in body.get("tags") or []:
            if tag.get("status") == "inactive":
                held["tags"].discard(tag["name"])
            else:
                held["tags"].add(tag["name"])
        return 204, {}, b""

    def _delete_permanent(self, hashed: str, body: dict[str, Any]) -> Answer:
        held = self.members.pop(hashed, None)
        if held is None:
            return _not_found()
        self.forgotten.add(hashed)
        return 204, {}, b""

    # ---- the rules -----------------------------------------------------------------------------

    def _refused(self, email: str, item: dict[str, Any]) -> str | None:
        """Return why a member is refused for its content, or None."""
        if not _EMAIL.match(email):
            return "Please provide a valid email address."
        if subscriber_hash(email) in self.forgotten:
            return (
                f"{email} was permanently deleted and cannot be re-imported. The contact must re-subscribe "
                "to get back on the list."
            )
        values = [email, *(item.get("merge_fields") or {}).values()]
        if any(str(v).strip().lower() in self.reject_values for v in values if v is not None):
            return "Your merge fields were invalid."
        return None

    def _may_become(self, held: dict[str, Any], status: str) -> bool:
        """Whether a member may be given ``status``: one who unsubscribed or was cleaned is in a
        compliance state, and only a person's own signup brings them back."""
        return not (held["status"] in ("unsubscribed", "cleaned") and status in ("subscribed", "pending"))

    def _compliance(self, email: str) -> str:
        self.counts["compliance"] += 1
        return (
            f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review and cannot "
            "be subscribed."
        )

    def _add(self, email: str, status: str, item: dict[str, Any]) -> dict[str, Any]:
        hashed = subscriber_hash(email)
        held = self.members.get(hashed)
        if held is None:
            held = {"id": hashed, "email_address": email, "status": status, "merge_fields": {}, "tags": set()}
            self.members[hashed] = held
            self.counts["created"] += 1
        elif held["status"] not in ("unsubscribed", "cleaned"):
            held["status"] = status
        held["archived"] = False
        self._apply(held, item)
        return held

    def _apply(self, held: dict[str, Any], item: dict[str, Any]) -> None:
        for tag, value in (item.get("merge_fields") or {}).items():
            held["merge_fields"][tag] = "" if value is None else str(value)
        for name in item.get("tags") or []:
            held["tags"].add(name if isinstance(name, str) else name.get("name"))
        for name in ("language", "vip", "email_type"):
            if name in item:
                held[name] = item[name]

    def _live(self, hashed: str) -> dict[str, Any] | None:
        held = self.members.get(hashed)
        return held if held is not None and not held["archived"] else None

    def _view(self, held: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": held["id"],
            "email_address": held["email_address"],
            "status": held["status"],
            "merge_fields": dict(held["merge_fields"]),
            "tags": [{"name": t} for t in sorted(held["tags"])],
            "list_id": LIST,
        }

    def _authorised(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            _, _, key = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            return False
        return key == KEY

    # ---- what tests read -----------------------------------------------------------------------

    def member(self, email: str) -> dict[str, Any] | None:
        """Return the member at ``email`` (archived ones too), as the API shows it."""
        with self._lock:
            held = self.members.get(subscriber_hash(email))
            return None if held is None else {**self._view(held), "archived": held["archived"]}

    def add_by_hand(self, email: str, status: str, merge_fields: dict[str, str] | None = None) -> str:
        """A person signs up (or is unsubscribed) in Mailchimp itself; return the member's id."""
        with self._lock:
            held = self._add(email, "subscribed", {"merge_fields": merge_fields or {}})
            held["status"] = status
            return str(held["id"])

    # ---- the contract suites' view -------------------------------------------------------------

    def destination(self) -> dict[str, Any]:
        return {
            "type": "mailchimp",
            "list_id": LIST,
            "api_key": "env:CONTRACT_MAILCHIMP_KEY",
            "status_for_new": "subscribed",
            "base_url": self.url,
            "timeout_s": 2,
        }

    def mapping(self, generic: dict[str, Any], key_column: str) -> dict[str, Any]:
        return {
            (
                "email_address" if name == "email" else f"merge_fields.{TAGS.get(name, name.upper()[:10])}"
            ): source
            for name, source in generic.items()
        }

    def records(self) -> list[dict[str, Any]]:
        generic = {tag: name for name, tag in TAGS.items()}
        with self._lock:
            return [
                {
                    "id": m["id"],
                    "email": m["email_address"].strip().lower(),
                    **{generic.get(tag, tag.lower()): value for tag, value in m["merge_fields"].items()},
                }
                for m in self.members.values()
                if not m["archived"]
            ]

    def stored(self, field: str, value: Any) -> Any:
        # merge fields hold text (emptied with ""); addresses are compared trimmed, in lower case
        text = "" if value is None else str(value)
        return text.strip().lower() if field == "email" else text

    def create_by_hand(self, email: str) -> str:
        return self.add_by_hand(email, "subscribed", {"FNAME": "by hand"})

    def delete_by_hand(self, record_id: str) -> None:
        with self._lock:  # a person archives the contact in Mailchimp
            self.members[record_id]["archived"] = True

    def writes(self, request: requests.PreparedRequest) -> bool:
        return "/3.0/lists/" in (request.url or "") and request.method != "GET"


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(body).encode()


def _problem(status: int, title: str, detail: str) -> Answer:
    document = {
        "type": "https://mailchimp.com/developer/marketing/docs/errors/",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": str(uuid.uuid4()),
    }
    return status, {"Content-Type": "application/problem+json; charset=utf-8"}, json.dumps(document).encode()


def _not_found() -> Answer:
    return _problem(404, "Resource Not Found", "The requested resource could not be found.")


FAKE = MailchimpFake
