"""Zendesk Support users or organizations in bulk jobs: submit at most 100, poll the job, read its
results.

- users written by identifier: ``POST /api/v2/users/create_or_update_many.json`` (each user found by
  its ``external_id`` or ``email``, else created);
- organizations written by identifier: Zendesk has no bulk create-or-update of organizations, so
  their ids are first looked up, ``GET /api/v2/organizations/show_many.json?external_ids=`` (at
  most 100, in one request); those found are updated by id in one job, the others created,
  ``POST /api/v2/organizations/create_many.json``, in another: the batch's handle names both jobs
  and which changes each carries;
- written by the Zendesk id this sync recorded (an identifier that changed, fields to clear):
  ``PUT /api/v2/{users|organizations}/update_many.json``;
- removed (mirror): ``DELETE /api/v2/{users|organizations}/destroy_many.json?ids=``: a user is soft
  deleted (their tickets stay, showing the user as deleted); an organization is deleted for good;
- each answers a ``job_status``; ``GET /api/v2/job_statuses/show_many.json?ids=`` (every job
  under way, in one request) says of each ``queued``,
  ``working``, ``completed`` (with one result per user, in request order: ``Created``,
  ``Updated``, ``Deleted`` or ``Failed`` with ``error`` and ``details``), ``failed`` or ``killed``.
"""

from __future__ import annotations

import base64
import json
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
#: a job that needs no request: changes that name no Zendesk record to touch
NOTHING = "-"
#: a handle of jobs that carry parts of one submission: JSON of [[job id, [change index, ...]], ...]
_PARTS = "["


class ZendeskDestination:
    """Writes one sync's records to Zendesk users or organizations, a job per request (two for
    organizations some of which exist and some not)."""

    max_batch_size = MAX_USERS

    def __init__(
        self,
        config: ZendeskDestinationConfig,
        authorization: str,
        max_jobs: int,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self._object, self._kind = config.object, config.object.removesuffix("s")
        # a submission of organizations may take two of the account's jobs
        self.max_jobs = max_jobs if config.object == "users" else max(1, max_jobs // 2)
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
            raise ValueError(f"Zendesk takes 1 to {MAX_USERS} {self._object} a job, got {len(changes)}")
        first = changes[0]
        if first.destination_id is None and first.action != "upsert":
            return NOTHING  # archive, clear or release a record we hold no id of
        if first.action == "archive":
            ids = ",".join(str(c.destination_id) for c in changes)
            return self._job("DELETE", "destroy_many", changes, params={"ids": ids})
        if first.destination_id is not None:
            return self._update(changes, [str(c.destination_id) for c in changes])
        if self._object == "users":
            return self._job(
                "POST", "create_or_update_many", changes, json={"users": list(map(self._fields, changes))}
            )
        return self._create_or_update_organizations(changes)

    def results(self, jobs: Sequence[tuple[str, Sequence[Change]]]) -> list[list[Outcome] | JobFailed | None]:
        parts = [_parts(job, len(changes)) for job, changes in jobs]
        asked = sorted({job for each in parts for job, _ in each if job != NOTHING})
        found: dict[str, dict[str, Any]] = {}
        if asked:  # every job in one request
            response = self._request("GET", "job_statuses/show_many.json", params={"ids": ",".join(asked)})
            self._raise_for_request(response, [c for _, changes in jobs for c in changes])
            found = {
                str(s.get("id")): s for s in _json(response).get("job_statuses") or [] if isinstance(s, dict)
            }
        return [
            self._job_outcomes(each, changes, found) for each, (_, changes) in zip(parts, jobs, strict=True)
        ]

    def _job_outcomes(
        self, parts: list[tuple[str, list[int]]], changes: Sequence[Change], found: dict[str, dict[str, Any]]
    ) -> list[Outcome] | JobFailed | None:
        """Return the outcomes of a submission once every job of it is done (None before): one job
        that ended without its work fails the whole submission, which is submitted again."""
        outcomes: dict[int, Outcome] = {}
        for job, indexes in parts:
            if job == NOTHING:
                why = f"no Zendesk id was recorded for this {self._kind}; nothing to do"
                outcomes.update((i, Outcome(changes[i].key, "skipped", reason=why)) for i in indexes)
                continue
            status = found.get(job)
            if status is None:
                return JobFailed(f"Zendesk no longer knows job {job} (job statuses are kept one day)")
            state = status.get("status")
            if state in ("queued", "working"):
                return None
            if state != "completed":
                message = redact(str(status.get("message") or ""), changes)[:200]
                return JobFailed(f"Zendesk job {job} ended {state}: {message}")
            results = status.get("results") or []
            for n, i in enumerate(indexes):
                outcomes[i] = self._outcome(changes[i], _result_for(n, results))
        return [outcomes[i] for i in range(len(changes))]

    def _update(self, changes: Sequence[Change], ids: Sequence[str]) -> str:
        items = [{**self._fields(c), "id": int(i)} for c, i in zip(changes, ids, strict=True)]
        return self._job("PUT", "update_many", changes, json={self._object: items})

    def _create_or_update_organizations(self, changes: Sequence[Change]) -> str:
        """Look the organizations up by external_id; update those found by id, create the others."""
        wanted = {_lower(c.record.get("external_id")) for c in changes} - {""}
        # an external_id holding a comma cannot be looked up in a list: it is created, and Zendesk
        # refuses it, with its reason, if it exists
        listed = sorted(w for w in wanted if "," not in w)
        ids: dict[str, str] = {}
        if listed:
            response = self._request(
                "GET", "organizations/show_many.json", params={"external_ids": ",".join(listed)}
            )
            self._raise_for_request(response, changes)
            for item in _json(response).get("organizations") or []:
                if isinstance(item, dict) and item.get("id") is not None:
                    ids[_lower(item.get("external_id"))] = str(item["id"])
        found = [i for i, c in enumerate(changes) if _lower(c.record.get("external_id")) in ids]
        missing = [i for i in range(len(changes)) if i not in set(found)]
        parts: list[tuple[str, list[int]]] = []
        if found:
            chosen = [changes[i] for i in found]
            parts.append(
                (self._update(chosen, [ids[_lower(c.record.get("external_id"))] for c in chosen]), found)
            )
        if missing:
            chosen = [changes[i] for i in missing]
            items = list(map(self._fields, chosen))
            parts.append((self._job("POST", "create_many", chosen, json={"organizations": items}), missing))
        return (
            parts[0][0] if len(parts) == 1 and parts[0][1] == list(range(len(changes))) else json.dumps(parts)
        )

    def _job(self, method: str, endpoint: str, changes: Sequence[Change], **kwargs: Any) -> str:
        """Ask for a job on ``{object}/{endpoint}.json``; return its id."""
        response = self._request(method, f"{self._object}/{endpoint}.json", **kwargs)
        self._raise_for_request(response, changes)
        job = _json(response).get("job_status") or {}
        if not job.get("id"):
            raise DestinationUnavailable("Zendesk queued no job (its answer has no job_status id)")
        return str(job["id"])

    def _fields(self, change: Change) -> dict[str, Any]:
        """Return the object a change writes: its standard fields, custom ones under ``{kind}_fields``."""
        custom = f"{self._kind}_fields"
        item: dict[str, Any] = {}
        for name, value in change.record.items():
            if name.startswith(f"{custom}."):
                item.setdefault(custom, {})[name.removeprefix(f"{custom}.")] = value
            else:
                item[name] = value
        return item

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
                f"e-mail, that token access is on, and that the agent may manage {self._object}"
            )
        if status == 429:
            raise RateLimited(f"{said}: {message or 'rate limit reached'}", retry_after(response) or 60.0)
        if status >= 500:
            raise DestinationUnavailable(f"{said}: {message}", retry_after(response))
        if status in (404, 405) or 300 <= status < 400:
            raise SystemicError(
                f"{said}; no Zendesk {self._object} API at this address: check destination.subdomain",
                "destination.subdomain",
            )
        raise RequestRejected(f"{said}: {message}")

    def _outcome(self, change: Change, result: dict[str, Any] | None) -> Outcome:
        if result is None:
            return Outcome(change.key, "rejected", reason=f"Zendesk's job did not report this {self._kind}")
        state = str(result.get("status", ""))
        if state == "Failed" or result.get("success") is False:
            error = redact(f"{result.get('error', 'Failed')}: {result.get('details', '')}", [change])[:500]
            if "RecordNotFound" in error and change.destination_id is not None:
                # deleted in Zendesk since: mirror has nothing left to remove; a write goes again by
                # its identifier (the delivery sees to it)
                if change.action == "archive":
                    return Outcome(
                        change.key, "delivered", change.destination_id, reason=error, created=False
                    )
                return Outcome(change.key, "gone", reason=error)
            return Outcome(change.key, "rejected", reason=error)
        user_id = result.get("id")
        return Outcome(
            change.key,
            "delivered",
            str(user_id) if user_id is not None else change.destination_id,
            created=state == "Created",
        )


def _parts(job: str, size: int) -> list[tuple[str, list[int]]]:
    """Return the jobs of a submission's handle, each with the indexes of the changes it carries."""
    if job.startswith(_PARTS):
        return [(str(part), [int(i) for i in indexes]) for part, indexes in json.loads(job)]
    return [(job, list(range(size)))]


def _lower(value: Any) -> str:
    """Return an external_id as Zendesk compares them: case-insensitively."""
    return "" if value is None else str(value).lower()


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
