"""A Zendesk Support users and organizations API on loopback, as Zendesk documents it (a test fake:
production code never imports it).

- ``POST /api/v2/users/create_or_update_many.json`` (at most 100 users, each found by
  ``external_id``, else by ``email``), ``PUT /api/v2/users/update_many.json`` (each by ``id``) and
  ``DELETE /api/v2/users/destroy_many.json?ids=`` (soft delete) queue a job and answer
  ``{"job_status": {"id", "status": "queued", ...}}``;
- ``GET /api/v2/job_statuses/{id}.json`` and ``show_many.json?ids=`` (those it still knows) move
  ``queued`` → ``working`` → ``completed`` as time passes; a completed job lists one result per user, in request order: ``Created``, ``Updated`` or
  ``Deleted`` with the user's ``id``, or ``Failed`` with ``error`` and ``details``; job statuses are
  forgotten after ``job_retention_s`` (a 404);
- organizations: ``GET /api/v2/organizations/show_many.json?external_ids=`` (or ``ids=``, at most
  100, answered at once), and jobs for ``POST create_many``, ``PUT update_many`` (each by ``id``)
  and ``DELETE destroy_many?ids=`` (a hard delete); an organization needs a ``name``, and its name
  and its ``external_id`` are unique, compared case-insensitively;
- at most ``max_jobs`` (30) jobs queued or working at once: one more is a 429; a user without a
  name cannot be created; an e-mail must look like one;
- ``Authorization: Basic base64({email}/token:{token})`` or ``Bearer {oauth token}``, else 401;
- ``requests_per_minute`` in a rolling minute (``window_s``), then 429 with ``Retry-After``;
  every answer carries ``X-Rate-Limit`` and ``X-Rate-Limit-Remaining``.

The work of a job is done when it is submitted and shown when it completes. Fault knobs:
``reject_values`` (a user holding one of them fails in the job's results), ``fail_jobs`` (that
share of jobs ends ``failed`` without doing anything), and random 429s, 503s and answers too late
(after the job was queued). ``FAKE`` is its view for the contract suites.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from tests.fakes.contract import Knobs, RandomFaults
from tests.fakes.loopback import Answer, LoopbackServer

EMAIL, TOKEN = "agent@example.com", "contract-zendesk-token"
MAX_USERS = 100


class ZendeskFake(LoopbackServer, Knobs):
    """The users API of one Zendesk account, and its view for the contract suites."""

    name = "zendesk"
    env = {"CONTRACT_ZENDESK_TOKEN": TOKEN}

    def __init__(
        self,
        requests_per_minute: int | None = None,
        window_s: float = 60.0,
        job_s: float = 0.02,
        max_jobs: int = 30,
        job_retention_s: float = 86_400.0,
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.window_s = window_s
        #: how long a job stays queued, then working (each)
        self.job_s = job_s
        self.max_jobs = max_jobs
        self.job_retention_s = job_retention_s
        self.users: dict[int, dict[str, Any]] = {}
        self.organizations: dict[int, dict[str, Any]] = {}
        #: active users by external_id and by email, in lower case
        self._index: dict[str, dict[str, int]] = {"external_id": {}, "email": {}}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.reject_values: set[str] = set()
        self.fail_jobs = 0.0
        self.random_faults: RandomFaults | None = None
        self.late_s = 2.5
        self.counts = {"requests": 0, "created": 0, "429": 0, "jobs": 0, "most_jobs": 0}
        self._sent: deque[float] = deque()
        self._next_id = 1000
        self._lock = threading.Lock()
        super().__init__()

    # ---- one request ---------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        path, query = urlsplit(target).path, parse_qs(urlsplit(target).query)
        with self._lock:
            self.counts["requests"] += 1
            if not self._authorised(headers.get("authorization", "")):
                return self._json(401, {"error": "Couldn't authenticate you"})
            limited = self._rate_limited()
            if limited is not None:
                return limited
            fault = self.random_faults.draw() if self.random_faults else None
            if fault == "429":
                return self._json(429, {"error": "test fake answers 429"}, {"Retry-After": "1"})
            if fault == "5xx":
                return self._json(503, {"error": "test fake answers 503"})
            answer = self._route(method, path, query, body)
        if fault == "late":  # done, and answered after the client gave up
            time.sleep(self.late_s)
        return answer

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        if method == "GET" and path == "/api/v2/job_statuses/show_many.json":
            return self._job_statuses([i for i in ",".join(query.get("ids", [])).split(",") if i])
        if method == "GET" and path.startswith("/api/v2/job_statuses/") and path.endswith(".json"):
            return self._job_status(path.rsplit("/", 1)[1].removesuffix(".json"))
        writes = {
            ("POST", "/api/v2/users/create_or_update_many.json"): self._create_or_update,
            ("PUT", "/api/v2/users/update_many.json"): self._update_by_id,
        }
        if (method, path) in writes:
            try:
                users = json.loads(body)["users"]
                assert isinstance(users, list) and all(isinstance(u, dict) for u in users)
            except (ValueError, KeyError, AssertionError):
                return self._json(
                    400, {"error": "InvalidValue", "description": "users must be an array of objects"}
                )
            return self._queue(users, writes[(method, path)])
        if method == "DELETE" and path == "/api/v2/users/destroy_many.json":
            ids = [i for i in ",".join(query.get("ids", [])).split(",") if i]
            return self._queue([{"id": i} for i in ids], self._destroy)
        if path.startswith("/api/v2/organizations/"):
            return self._organizations(method, path.removeprefix("/api/v2/organizations/"), query, body)
        return self._json(404, {"error": "InvalidEndpoint", "description": "Not found"})

    def _organizations(self, method: str, endpoint: str, query: dict[str, list[str]], body: bytes) -> Answer:
        listed = [i for i in ",".join(query.get("ids", []) or query.get("external_ids", [])).split(",") if i]
        if method == "GET" and endpoint == "show_many.json":
            if not listed or len(listed) > MAX_USERS:
                return self._json(
                    400, {"error": "InvalidValue", "description": "1 to 100 ids or external_ids"}
                )
            by = "id" if "ids" in query else "external_id"
            wanted = {value.lower() for value in listed}
            found = [o for o in self.organizations.values() if str(o.get(by) or "").lower() in wanted]
            return self._json(200, {"organizations": found, "count": len(found), "next_page": None})
        if method == "DELETE" and endpoint == "destroy_many.json":
            return self._queue([{"id": i} for i in listed], self._destroy_organization)
        work = {
            ("POST", "create_many.json"): self._create_organization,
            ("PUT", "update_many.json"): self._update_organization,
        }
        if (method, endpoint) not in work:
            return self._json(404, {"error": "InvalidEndpoint", "description": "Not found"})
        try:
            items = json.loads(body)["organizations"]
            assert isinstance(items, list) and all(isinstance(o, dict) for o in items)
        except (ValueError, KeyError, AssertionError):
            return self._json(
                400, {"error": "InvalidValue", "description": "organizations must be an array of objects"}
            )
        return self._queue(items, work[(method, endpoint)])

    def _queue(self, users: list[dict[str, Any]], work: Any) -> Answer:
        if not users or len(users) > MAX_USERS:
            return self._json(
                400, {"error": "InvalidValue", "description": f"between 1 and {MAX_USERS} users"}
            )
        now = time.monotonic()
        active = sum(1 for job in self.jobs.values() if job["done_at"] > now)
        if active >= self.max_jobs:
            self.counts["429"] += 1
            return self._json(
                429, {"error": "TooManyJobs", "description": "Too many jobs queued"}, {"Retry-After": "1"}
            )
        job_id = f"V3-{len(self.jobs) + 1:08x}"
        failed = self.fail_jobs and random.random() < self.fail_jobs
        results = None if failed else [work(user) for user in users]
        self.jobs[job_id] = {
            "results": results,
            "total": len(users),
            "at": now,
            "done_at": now + 2 * self.job_s,
        }
        self.counts["jobs"] += 1
        self.counts["most_jobs"] = max(self.counts["most_jobs"], active + 1)
        return self._json(200, {"job_status": self._status(job_id, now)})

    def _status(self, job_id: str, now: float) -> dict[str, Any]:
        job = self.jobs[job_id]
        elapsed = now - job["at"]
        status = "queued" if elapsed < self.job_s else "working" if elapsed < 2 * self.job_s else "completed"
        if status == "completed" and job["results"] is None:
            status = "failed"
        document: dict[str, Any] = {
            "id": job_id,
            "url": f"{self.url}/api/v2/job_statuses/{job_id}.json",
            "job_type": "Bulk Create/Update Users",
            "total": job["total"],
            "progress": job["total"] if status == "completed" else 0,
            "status": status,
            "message": "Completed at " + time.strftime("%Y-%m-%d %H:%M:%S")
            if status == "completed"
            else None,
            "results": job["results"] if status == "completed" else None,
        }
        return document

    def _job_status(self, job_id: str) -> Answer:
        now = time.monotonic()
        job = self.jobs.get(job_id)
        if job is None or now - job["at"] > self.job_retention_s:
            return self._json(404, {"error": "RecordNotFound", "description": "Not found"})
        return self._json(200, {"job_status": self._status(job_id, now)})

    def _job_statuses(self, ids: list[str]) -> Answer:
        if not ids or len(ids) > 100:
            return self._json(400, {"error": "InvalidValue", "description": "ids: 1 to 100 job ids"})
        now = time.monotonic()
        known = [i for i in ids if i in self.jobs and now - self.jobs[i]["at"] <= self.job_retention_s]
        return self._json(200, {"job_statuses": [self._status(i, now) for i in known]})

    # ---- the work of a job ---------------------------------------------------------------------

    def _create_or_update(self, user: dict[str, Any]) -> dict[str, Any]:
        found = self._find(user)
        failed = self._invalid(user, creating=found is None)
        if failed is not None:
            return failed
        if found is None:
            found = self._next_id
            self._next_id += 1
            self.users[found] = {"id": found, "active": True, "user_fields": {}}
            self.counts["created"] += 1
            status = "Created"
        else:
            status = "Updated"
        self._apply(self.users[found], user)
        return {"id": found, "status": status, "external_id": self.users[found].get("external_id")}

    def _update_by_id(self, user: dict[str, Any]) -> dict[str, Any]:
        target = self.users.get(int(user.get("id", 0)))
        if target is None or not target["active"]:
            return {
                "id": user.get("id"),
                "status": "Failed",
                "error": "RecordNotFound",
                "details": "User not found",
            }
        failed = self._invalid(user, creating=False)
        if failed is not None:
            return failed
        self._apply(target, {k: v for k, v in user.items() if k != "id"})
        return {"id": target["id"], "status": "Updated", "action": "update", "success": True}

    def _destroy(self, user: dict[str, Any]) -> dict[str, Any]:
        target = self.users.get(int(user["id"]))
        if target is None or not target["active"]:
            return {
                "id": user["id"],
                "status": "Failed",
                "error": "RecordNotFound",
                "details": "User not found",
            }
        target["active"] = False  # soft deleted: their tickets stay, with the user shown as deleted
        for name in self._index:
            self._unindex(target, name)
        return {"id": target["id"], "status": "Deleted", "action": "delete", "success": True}

    def _create_organization(self, item: dict[str, Any]) -> dict[str, Any]:
        failed = self._organization_invalid(item, None)
        if failed is not None:
            return failed
        found = self._next_id
        self._next_id += 1
        self.organizations[found] = {"id": found, "organization_fields": {}}
        self.counts["created"] += 1
        self._apply_organization(self.organizations[found], item)
        return {"id": found, "status": "Created", "action": "create", "success": True}

    def _update_organization(self, item: dict[str, Any]) -> dict[str, Any]:
        target = self.organizations.get(int(item.get("id", 0)))
        if target is None:
            return {
                "id": item.get("id"),
                "status": "Failed",
                "error": "RecordNotFound",
                "details": "Not found",
            }
        failed = self._organization_invalid(item, target["id"])
        if failed is not None:
            return failed
        self._apply_organization(target, {k: v for k, v in item.items() if k != "id"})
        return {"id": target["id"], "status": "Updated", "action": "update", "success": True}

    def _destroy_organization(self, item: dict[str, Any]) -> dict[str, Any]:
        if self.organizations.pop(int(item["id"]), None) is None:  # its users and tickets stay
            return {"id": item["id"], "status": "Failed", "error": "RecordNotFound", "details": "Not found"}
        return {"id": int(item["id"]), "status": "Deleted", "action": "delete", "success": True}

    def _organization_invalid(self, item: dict[str, Any], own: int | None) -> dict[str, Any] | None:
        def fail(details: str) -> dict[str, Any]:
            return {"id": own, "status": "Failed", "error": "OrganizationUpdateError", "details": details}

        if own is None and not str(item.get("name") or "").strip():
            return fail("Name: cannot be blank")
        for field, said in (("name", "Name"), ("external_id", "External id")):
            value = str(item.get(field) or "").lower()
            if value and any(
                str(o.get(field) or "").lower() == value and o["id"] != own
                for o in self.organizations.values()
            ):
                return fail(f"{said}: has already been taken")
        if self._rejected(item, "organization_fields"):
            return fail("Organization fields: a value is not valid")
        return None

    def _rejected(self, item: dict[str, Any], custom: str) -> bool:
        """Whether a standard or custom field of ``item`` holds one of ``reject_values``."""
        values = [*item.values(), *(item.get(custom) or {}).values()]
        return any(
            str(v).lower() in self.reject_values for v in values if v is not None and not isinstance(v, dict)
        )

    def _apply_organization(self, held: dict[str, Any], item: dict[str, Any]) -> None:
        for name, value in item.items():
            if name == "organization_fields":
                held["organization_fields"].update(value or {})
            else:
                held[name] = value

    def _find(self, user: dict[str, Any]) -> int | None:
        for field in ("external_id", "email"):
            value = user.get(field)
            if value not in (None, ""):
                return self._index[field].get(str(value).lower())
        return None

    def _invalid(self, user: dict[str, Any], creating: bool) -> dict[str, Any] | None:
        def fail(details: str) -> dict[str, Any]:
            return {"id": user.get("id"), "status": "Failed", "error": "UserUpdateError", "details": details}

        if creating and not str(user.get("name") or "").strip():
            return fail("Name: is too short (minimum is 1 character)")
        email = user.get("email")
        if email not in (None, "") and ("@" not in str(email) or " " in str(email).strip()):
            return fail(f"Email: {email} is not properly formatted")
        if self._rejected(user, "user_fields"):
            return fail("User fields: a value is not valid")
        return None

    def _apply(self, held: dict[str, Any], user: dict[str, Any]) -> None:
        for name, value in user.items():
            if name == "user_fields":
                held["user_fields"].update(value or {})
                continue
            if name in self._index:
                self._unindex(held, name)
                if value not in (None, ""):
                    self._index[name][str(value).lower()] = held["id"]
            held[name] = value

    def _unindex(self, held: dict[str, Any], name: str) -> None:
        old = held.get(name)
        if old not in (None, "") and self._index[name].get(str(old).lower()) == held["id"]:
            del self._index[name][str(old).lower()]

    # ---- around the work -----------------------------------------------------------------------

    def _authorised(self, header: str) -> bool:
        basic = base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()
        return header in (f"Basic {basic}", f"Bearer {TOKEN}")

    def _rate_limited(self) -> Answer | None:
        if self.requests_per_minute is None:
            return None
        now = time.monotonic()
        while self._sent and self._sent[0] <= now - self.window_s:
            self._sent.popleft()
        if len(self._sent) >= self.requests_per_minute:
            self.counts["429"] += 1
            wait = max(1, round(self.window_s - (now - self._sent[0]) + 0.5))
            return self._json(429, {"error": "APIRateLimitExceeded"}, {"Retry-After": str(wait)})
        self._sent.append(now)
        return None

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
        limit = self.requests_per_minute or 700
        out = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Rate-Limit": str(limit),
            "X-Rate-Limit-Remaining": str(max(0, limit - len(self._sent))),
            **(headers or {}),
        }
        return status, out, json.dumps(body).encode()

    # ---- the contract suites' view -------------------------------------------------------------

    def destination(self) -> dict[str, Any]:
        return {
            "type": "zendesk",
            "subdomain": "contract",
            "base_url": self.url,
            "email": EMAIL,
            "api_token": "env:CONTRACT_ZENDESK_TOKEN",
            "rate_limit": {"requests": 10_000, "per_seconds": 1},
            "timeout_s": 2,
            "poll_s": 0.02,
        }

    #: where the generic fields go: the object's custom fields
    custom = "user_fields"

    def mapping(self, generic: dict[str, Any], key_column: str) -> dict[str, Any]:
        # found by external_id (the model's key) and named after it (a user or an organization
        # needs a name; an organization's is unique); the generic fields are custom fields
        return {
            "external_id": key_column,
            "name": {"column": key_column, "transform": "string"},
            **{f"{self.custom}.{name}": source for name, source in generic.items()},
        }

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"id": str(u["id"]), **u["user_fields"]} for u in self.users.values() if u["active"]]

    def delete_by_hand(self, record_id: str) -> None:
        with self._lock:
            self._destroy({"id": record_id})

    def writes(self, request: requests.PreparedRequest) -> bool:
        return "/api/v2/users/" in (request.url or "")


class ZendeskOrganizationsFake(ZendeskFake):
    """The same account, as the contract suites see a sync of organizations."""

    variant = "organizations"
    custom = "organization_fields"

    def destination(self) -> dict[str, Any]:
        return {**super().destination(), "object": "organizations"}

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"id": str(o["id"]), **o["organization_fields"]} for o in self.organizations.values()]

    def delete_by_hand(self, record_id: str) -> None:
        with self._lock:
            self._destroy_organization({"id": record_id})

    def writes(self, request: requests.PreparedRequest) -> bool:
        return "/api/v2/organizations/" in (request.url or "") and request.method != "GET"


FAKE = ZendeskFake
FAKES = [ZendeskFake, ZendeskOrganizationsFake]
