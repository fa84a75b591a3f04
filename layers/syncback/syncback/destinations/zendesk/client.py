"""Zendesk Support users in bulk jobs: submit at most 100 users, poll the job, read its results.

- written by identifier: ``POST /api/v2/users/create_or_update_many.json`` (each user found by its
  ``external_id`` or ``email``, else created);
- written by the Zendesk id this sync recorded (an identifier that changed, fields to clear):
  ``PUT /api/v2/users/update_many.json``;
- removed (mirror): ``DELETE /api/v2/users/destroy_many.json?ids=``, a soft delete: the user's
  tickets stay, showing the user as deleted;
- each answers a ``job_status``; ``GET /api/v2/job_statuses/show_many.json?ids=`` (every job
  under way, in one request) says of each ``queued``,
  ``working``, ``completed`` (with one result per user, in request order: ``Created``,
  ``Updated``, ``Deleted`` or ``Failed`` with ``error`` and ``details``), ``failed`` or ``killed``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import requests

from syncback.destinations.base import Change, JobFailed, Outcome
from syncback.destinations.http import json_body, redact, retry_after, send
from syncback.destinations.zendesk import ZendeskDestinationConfig
from syncback.errors import (
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SystemicError,
)

MAX_USERS = 100
#: a job that needs no request: changes that name no Zendesk user to touch
NOTHING = "-"
_NO_ID = "no Zendesk id was recorded for this user; nothing to do"


class ZendeskDestination:
    """Writes one sync's records to Zendesk users, a job per request."""

    max_batch_size = MAX_USERS

    def __init__(
        self,
        config: ZendeskDestinationConfig,
        authorization: str,
        max_jobs: int,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self.max_jobs = max_jobs
        self.poll_s = config.poll_s
        self._session = session or requests.Session()
        self._session.headers.update({"Authorization": authorization, "Content-Type": "application/json"})
        self._api = f"{config.url}/api/v2"

    @staticmethod
    def basic(email: str, token: str) -> str:
        """Return the Authorization header of an API token: Basic ``{email}/token:{token}``."""
        return "Basic " + base64.b64encode(f"{email}/token:{token}".encode()).decode()

    def submit(self, changes: Sequence[Change], scope: str = "") -> str:
        if not changes or len(changes) > MAX_USERS:
            raise ValueError(f"Zendesk takes 1 to {MAX_USERS} users a job, got {len(changes)}")
        first = changes[0]
        if first.destination_id is None and first.action != "upsert":
            return NOTHING  # archive, clear or release a user we hold no id of
        if first.action == "archive":
            ids = ",".join(str(c.destination_id) for c in changes)
            response = self._request("DELETE", "users/destroy_many.json", params={"ids": ids})
        elif first.destination_id is not None:
            users = [{**_user(c), "id": int(str(c.destination_id))} for c in changes]
            response = self._request("PUT", "users/update_many.json", json={"users": users})
        else:
            response = self._request(
                "POST", "users/create_or_update_many.json", json={"users": [_user(c) for c in changes]}
            )
        self._raise_for_request(response, changes)
        job = _json(response).get("job_status") or {}
        if not job.get("id"):
            raise DestinationUnavailable("Zendesk queued no job (its answer has no job_status id)")
        return str(job["id"])

    def results(self, jobs: Sequence[tuple[str, Sequence[Change]]]) -> list[list[Outcome] | JobFailed | None]:
        asked = [job for job, _ in jobs if job != NOTHING]
        found: dict[str, dict[str, Any]] = {}
        if asked:  # every job in one request
            response = self._request("GET", "job_statuses/show_many.json", params={"ids": ",".join(asked)})
            self._raise_for_request(response, [c for _, changes in jobs for c in changes])
            found = {
                str(s.get("id")): s for s in _json(response).get("job_statuses") or [] if isinstance(s, dict)
            }
        return [self._job_outcomes(job, changes, found.get(job)) for job, changes in jobs]

    def _job_outcomes(
        self, job: str, changes: Sequence[Change], status: dict[str, Any] | None
    ) -> list[Outcome] | JobFailed | None:
        if job == NOTHING:
            return [Outcome(c.key, "skipped", reason=_NO_ID) for c in changes]
        if status is None:
            return JobFailed(f"Zendesk no longer knows job {job} (job statuses are kept one day)")
        state = status.get("status")
        if state in ("queued", "working"):
            return None
        if state != "completed":
            message = redact(str(status.get("message") or ""), changes)[:200]
            return JobFailed(f"Zendesk job {job} ended {state}: {message}")
        results = status.get("results") or []
        return [self._outcome(change, _result_for(i, results)) for i, change in enumerate(changes)]

    def close(self) -> None:
        self._session.close()

    # ---- requests, and what their answers mean -------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self._api}/{path}"
        who = f"Zendesk {path.removesuffix('.json')}"
        return send(self._session, method, url, who, "destination.base_url", self.config.timeout_s, **kwargs)

    def _raise_for_request(self, response: requests.Response, sent: Sequence[Change]) -> None:
        status = response.status_code
        if status < 300:
            return
        body = _json(response)
        said = f"Zendesk answered {status}"
        message = redact(
            f"{body.get('error', '')} {body.get('description', '')} {body.get('details', '')}", sent
        ).strip()[:300]
        if status in (401, 403):
            raise DestinationAuthError(
                f"{said}: {message or response.reason}. Check the API token (or OAuth token), the agent's "
                "e-mail, that token access is on, and that the agent may manage users"
            )
        if status == 429:
            raise RateLimited(f"{said}: {message or 'rate limit reached'}", retry_after(response) or 60.0)
        if status >= 500:
            raise DestinationUnavailable(f"{said}: {message}", retry_after(response))
        if status in (404, 405) or 300 <= status < 400:
            raise SystemicError(
                f"{said}; no Zendesk users API at this address: check destination.subdomain",
                "destination.subdomain",
            )
        raise RequestRejected(f"{said}: {message}")

    def _outcome(self, change: Change, result: dict[str, Any] | None) -> Outcome:
        if result is None:
            return Outcome(change.key, "rejected", reason="Zendesk's job did not report this user")
        state = str(result.get("status", ""))
        if state == "Failed" or result.get("success") is False:
            error = redact(f"{result.get('error', 'Failed')}: {result.get('details', '')}", [change])[:500]
            if "RecordNotFound" in error and change.destination_id is not None:
                # deleted in Zendesk since: mirror has nothing left to remove; a write is refused
                # with Zendesk's reason (README: a user deleted by hand)
                if change.action == "archive":
                    return Outcome(
                        change.key, "delivered", change.destination_id, reason=error, created=False
                    )
                return Outcome(change.key, "rejected", change.destination_id, reason=error)
            return Outcome(change.key, "rejected", reason=error)
        user_id = result.get("id")
        return Outcome(
            change.key,
            "delivered",
            str(user_id) if user_id is not None else change.destination_id,
            created=state == "Created",
        )


def _user(change: Change) -> dict[str, Any]:
    """Return the user object of a change: its standard fields, and custom ones under user_fields."""
    user: dict[str, Any] = {}
    for name, value in change.record.items():
        if name.startswith("user_fields."):
            user.setdefault("user_fields", {})[name.removeprefix("user_fields.")] = value
        else:
            user[name] = value
    return user


def _result_for(index: int, results: list[Any]) -> dict[str, Any] | None:
    """Return the result of the ``index``-th user of a job: results keep the request's order (Zendesk
    says so); one that names an ``index`` is taken by it."""
    by_index = {r["index"]: r for r in results if isinstance(r, dict) and isinstance(r.get("index"), int)}
    if by_index:
        return by_index.get(index)
    found = results[index] if index < len(results) else None
    return found if isinstance(found, dict) else None


def _json(response: requests.Response) -> dict[str, Any]:
    body = json_body(response)
    return body if isinstance(body, dict) else {}
