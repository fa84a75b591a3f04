"""Meta Custom Audience members: ``POST /{version}/{audience_id}/users`` adds, ``DELETE`` of the same
path removes, with ``{"payload": {"schema": [...], "data": [[...], ...]}}``, at most 10,000 rows.

- ``schema`` is the mapping's keys, in name order; each row holds their values as the warehouse
  hashed them, an unknown key left blank ("" as Meta asks), ``LOOKALIKE_VALUE`` as a number.
- A write adds the member (adding one Meta holds changes nothing). A member whose identity moved
  (a customer's new e-mail: the snapshot's id is the old hash) is released first, in the plan's
  phase 1: removed by its old hash; its new row is added in phase 2. Mirror removes by the identity
  hash alone.
- Meta answers in aggregate: ``{"audience_id", "session_id", "num_received",
  "num_invalid_entries", "invalid_entry_samples": {entry: reason}}``. A sample is matched back to
  the rows holding its value (a hash) and those are rejected with Meta's reason; the rest are
  delivered. When Meta counts more invalid entries than its samples name, which rows they are is
  unknown: the request is refused (``RequestRejected``) and the delivery splits it in halves, each
  sent again (adds and removes are idempotent), until every invalid entry is named or alone. No
  row is ever reported delivered that Meta may have refused.
- No member id exists: a record's destination id is its identity hash.

Errors are Graph API JSON, ``{"error": {"message", "type", "code", "error_subcode",
"fbtrace_id"}}``, classified by code here and nowhere else (HTTP statuses vary: throttles come as
400s). ``X-Business-Use-Case-Usage`` says, per ad account, ``estimated_time_to_regain_access`` in
minutes, which a throttle waits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import requests

from syncback.destinations.base import Change, Outcome
from syncback.destinations.http import json_body, redact, send
from syncback.destinations.meta_audience import VALUE, MetaAudienceDestinationConfig
from syncback.errors import (
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SystemicError,
)

#: 190: the token is invalid or expired; 102: the session is; 10, 200-299: a permission is missing
AUTH_CODES = {190, 102}
PERMISSION_CODES = {10, *range(200, 300)}
#: 4: the app, 17: the user, 32: the page, 613: the ad account; 80000-80014: Business Use Case limits
THROTTLE_CODES = {4, 17, 32, 613, *range(80000, 80015)}
#: 1: unknown error, 2: service temporarily unavailable
UNAVAILABLE_CODES = {1, 2}
#: the audience is flagged as suggesting health or financial status (operation_status 471)
FLAGGED_SUBCODE = 1713230
#: "Object with ID … does not exist, cannot be loaded due to missing permissions, or does not
#: support this operation" (code 100), and "Some of the aliases you requested do not exist" (803)
NO_SUCH_AUDIENCE = {33}
#: "Unknown or deprecated API version" (2635), and a path the Graph API does not know (2500)
VERSION_CODES = {2635, 2500}
REASON_CHARS = 500


class MetaAudienceDestination:
    """Adds and removes the members of one Meta Custom Audience."""

    def __init__(
        self,
        config: MetaAudienceDestinationConfig,
        access_token: str,
        schema: Sequence[str],
        identity_key: str,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self.max_batch_size = config.batch_size
        self.schema = list(schema)
        self.identity_key = identity_key
        self._token = access_token
        self._session = session or requests.Session()
        self._session.headers.update(
            {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
        )

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        if not changes:
            return []
        if len(changes) > self.max_batch_size:
            raise ValueError(f"Meta takes at most {self.max_batch_size} rows a request, got {len(changes)}")
        # the delivery groups writes by whether they hold an id, so one call may mix upserts,
        # clears and releases: removals (archive, release: the old hash goes) are sent first
        outcomes: dict[str, Outcome] = {}
        removals = [c for c in changes if c.action in ("archive", "release")]
        upserts = [c for c in changes if c.action == "upsert"]
        if removals:
            outcomes.update((o.key, o) for o in self._remove(removals))
        if upserts:
            outcomes.update((o.key, o) for o in self._add(upserts))
        for c in changes:
            if c.key not in outcomes:  # clear: removal is delete, nothing is emptied
                outcomes[c.key] = Outcome(
                    c.key, "skipped", reason=f"a Meta audience member is not {c.action}ed"
                )
        return [outcomes[c.key] for c in changes]

    def close(self) -> None:
        self._session.close()

    # ---- requests ----------------------------------------------------------------------------

    def _add(self, changes: Sequence[Change]) -> list[Outcome]:
        settled: dict[str, Outcome] = {}
        sendable: list[Change] = []
        for change in changes:
            if not _text(change.record.get(self.identity_key)):
                settled[change.key] = Outcome(
                    change.key, "rejected", reason=f"no {self.identity_key}: Meta names the member by it"
                )
            else:
                sendable.append(change)
        # a member whose identity changed gave its old hash up in phase 1 (a release): only add
        if sendable:
            rows = [self._row(c) for c in sendable]
            rejected = self._users("POST", self.schema, rows, sendable)
            for change in sendable:
                reason = rejected.get(change.key)
                settled[change.key] = (
                    Outcome(change.key, "rejected", reason=reason)
                    if reason is not None
                    else Outcome(change.key, "delivered", self._identity(change))
                )
        return [settled[c.key] for c in changes]

    def _remove(self, changes: Sequence[Change]) -> list[Outcome]:
        known = [c for c in changes if c.destination_id]
        outcomes = {
            c.key: Outcome(c.key, "skipped", reason="no member hash was recorded for this row")
            for c in changes
            if not c.destination_id
        }
        if known:
            rows = [[c.destination_id or ""] for c in known]
            rejected = self._users("DELETE", [self.identity_key], rows, known)
            for c in known:
                reason = rejected.get(c.key)
                outcomes[c.key] = (
                    Outcome(c.key, "rejected", reason=reason)
                    if reason is not None
                    else Outcome(c.key, "delivered", c.destination_id, created=False)
                )
        return [outcomes[c.key] for c in changes]

    def _users(
        self, method: str, schema: list[str], rows: list[list[Any]], sent: Sequence[Change]
    ) -> dict[str, str]:
        """Send one add (POST) or remove (DELETE); return the reason of each change Meta refused."""
        body = json.dumps(
            {"payload": {"schema": schema, "data": rows}}, separators=(",", ":"), allow_nan=False
        )
        response = send(
            self._session,
            method,
            self.config.url,
            f"Meta audience users ({method})",
            "destination.base_url",
            self.config.timeout_s,
            data=body.encode(),
        )
        self._raise_for_request(method, response, sent)
        return self._invalid_entries(method, json_body(response), schema.index(self.identity_key), rows, sent)

    def _row(self, change: Change) -> list[Any]:
        return [_value(name, change.record.get(name)) for name in self.schema]

    def _identity(self, change: Change) -> str:
        return _text(change.record.get(self.identity_key)).lower()

    # ---- answers: classified here and nowhere else ----------------------------------------------

    def _invalid_entries(
        self, method: str, answer: Any, identity: int, rows: list[list[Any]], sent: Sequence[Change]
    ) -> dict[str, str]:
        """Match Meta's invalid entry samples to the rows holding their values; refuse the request
        when Meta counts more invalid entries than its samples name, so the delivery splits it."""
        if not isinstance(answer, dict):
            raise DestinationUnavailable(f"Meta audience users ({method}) answered without a JSON object")
        invalid = answer.get("num_invalid_entries") or 0
        samples = answer.get("invalid_entry_samples") or {}
        if not isinstance(invalid, int) or not isinstance(samples, dict):
            raise DestinationUnavailable(
                f"Meta audience users ({method}) answered counts that are not counts"
            )
        if invalid == 0:
            return {}
        # a sample names its entry by a value of it: the member's identity where it is one (unique
        # in a request), else any value the row holds (a first name may be many rows')
        by_identity: dict[str, list[int]] = {}
        by_value: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_identity.setdefault(str(row[identity]).lower(), []).append(i)
            for value in row:
                if isinstance(value, str) and value:
                    by_value.setdefault(value.lower(), []).append(i)
        found: dict[str, str] = {}
        for entry, why in samples.items():
            named = str(entry).strip().lower()
            for i in by_identity.get(named) or by_value.get(named, []):
                found[sent[i].key] = _reason(why, sent, self._token)
        unnamed = invalid - len(found)
        if unnamed <= 0:
            return found
        if len(sent) == 1:
            return {sent[0].key: "Meta: counted this entry invalid without saying why"}
        raise RequestRejected(
            f"Meta audience users ({method}): {invalid} of {len(sent)} entries invalid, {unnamed} not "
            "named by Meta's samples; the request is split to find them"
        )

    def _raise_for_request(self, method: str, response: requests.Response, sent: Sequence[Change]) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        error = _error(response)
        code, subcode = error.get("code"), error.get("error_subcode")
        message = redact(str(error.get("message") or f"HTTP {status}"), sent, [self._token])[:300]
        said = f"Meta audience users ({method}) answered {status}, code {code}: {message}"
        if code in AUTH_CODES or status == 401:
            raise DestinationAuthError(
                f"{said}. The access token is invalid or expired: check destination.access_token (a "
                "system user token does not expire; a user token does, within 60 days)"
            )
        if code in PERMISSION_CODES or status == 403:
            raise DestinationAuthError(
                f"{said}. Give the token's system user ads_management, and access to the audience's ad "
                "account (Business Settings > System users > Assign assets); check destination.access_token"
            )
        if subcode == FLAGGED_SUBCODE:
            raise SystemicError(
                f"{said}. Meta has flagged this audience as suggesting health or financial status "
                "(operation_status 471) and blocks changes to its members: appeal the restriction in "
                "Audience Manager, or create a new audience whose name and data suggest neither, and "
                "point the sync at it",
                "destination.audience_id",
            )
        if code in THROTTLE_CODES or status == 429:
            raise RateLimited(f"{said}: Meta's rate limit", _regain_access_s(response))
        if status >= 500 or code in UNAVAILABLE_CODES or error.get("is_transient") is True:
            raise DestinationUnavailable(said)
        if code == 803 or (code == 100 and subcode in NO_SUCH_AUDIENCE):
            raise SystemicError(
                f"{said}. No custom audience {self.config.audience_id} is visible to this token: check "
                "destination.audience_id, and that the token's system user has the ad account",
                "destination.audience_id",
            )
        if code in VERSION_CODES or status in (404, 405) or 300 <= status < 400:
            raise SystemicError(
                f"{said}. No Graph API users edge at this address: check destination.api_version "
                f"({self.config.api_version}: Meta retires versions after about two years)",
                "destination.api_version",
            )
        raise RequestRejected(said)


def _error(response: requests.Response) -> dict[str, Any]:
    body = json_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _regain_access_s(response: requests.Response) -> float | None:
    """Return the seconds ``X-Business-Use-Case-Usage`` says until access is regained, or None."""
    try:
        usage = json.loads(response.headers.get("X-Business-Use-Case-Usage", ""))
    except ValueError:
        return None
    minutes = [
        entry.get("estimated_time_to_regain_access")
        for entries in (usage.values() if isinstance(usage, dict) else [])
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict)
    ]
    found = [float(m) for m in minutes if isinstance(m, int | float) and math.isfinite(m) and m >= 0]
    return max(found) * 60 if found else None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _value(name: str, value: Any) -> Any:
    """Return a member's value as the payload carries it: blank where unknown, hashes as text."""
    if value is None:
        return ""
    if name == VALUE:
        return value
    return str(value)


def _reason(why: Any, sent: Sequence[Change], token: str) -> str:
    return redact(f"Meta: {why}", sent, [token])[:REASON_CHARS]
