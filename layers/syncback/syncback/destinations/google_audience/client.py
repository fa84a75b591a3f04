"""Google audience members through the Data Manager API: ``POST /v1/audienceMembers:ingest`` and
``POST /v1/audienceMembers:remove``, at most 10,000 members a request (``batch_size``).

- A member is its ``userData.userIdentifiers``: ``emailAddress`` and ``phoneNumber`` (SHA-256, hex,
  hashed in the warehouse), ``address`` (``givenName``, ``familyName`` hashed; ``regionCode``,
  ``postalCode`` as they are), each only when it has a value (an address only when all four have
  one), and its ``consent`` (the spec's, or the row's ``ad_user_data`` / ``ad_personalization``).
  A value of a hashed field that is not a SHA-256 hex digest is never sent: its record is rejected.
- Every request names one destination (``operatingAccount``, ``loginAccount`` for a manager
  account, ``productDestinationId`` = the user list), ``encoding: HEX``, ``validateOnly``; an ingest
  also says the Customer Match terms are accepted (``termsOfService``).
- The destination id of a member is the identifiers it was sent with (``e=<hash>|p=<hash>|a=...``):
  removal sends them back.
  A record whose identity changed (a new e-mail; the phone where no e-mail is mapped) gives its old
  identifiers up in the plan's phase 1 (a release: removed) and is ingested under the new ones in
  phase 2 (``moves_by_release``), so no ingest of one row meets another row's removal of the same
  identifiers in the wrong order. The same person with another phone or address (or a sync with no
  identity, an address alone) is removed under the old identifiers and ingested under the new in
  one write, removals first.
- Google answers ``{"requestId": ...}``: it goes into each delivered outcome's reason (the receipt)
  and the log. With ``validate_only`` Google checks and applies nothing: members it took are
  skipped (the snapshot does not advance), those it refused are rejected. Data Manager says neither whether a member was already in the list nor who put it
  there: ``created`` is left unknown, and mirror removes members whoever added them (the spec agreed
  with ``dedicated_audience``).
- Errors are google.rpc.Status, ``{"error": {"code", "message", "status", "details"}}``. A request
  with an invalid member is refused whole (400 INVALID_ARGUMENT) with a ``google.rpc.BadRequest``
  field violation naming it (``audience_members.audience_members[3]...``): those records are
  rejected with Google's reason, and the rest are sent again in a new request (nothing of the
  refused one was applied). A refusal that names no member is the whole request's: a destination or
  terms problem is systemic (the run stops, naming the spec field), anything else is refused for the
  delivery to split. 401 UNAUTHENTICATED and 403 PERMISSION_DENIED stop the run with the fix; 429
  RESOURCE_EXHAUSTED waits (Retry-After when given); 5xx and timeouts are transient.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, unquote

import requests

from syncback.destinations.base import Change, Outcome
from syncback.destinations.google_audience import (
    ADDRESS,
    CONSENT_FIELDS,
    HASHED,
    MAX_MEMBERS,
    SCOPE,
    GoogleAudienceDestinationConfig,
)
from syncback.destinations.http import json_body, redact, retry_after, send
from syncback.errors import (
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SystemicError,
)

log = logging.getLogger("syncback")

REASON_CHARS = 500
#: how many times one write sends its members again after Google named some of them invalid (each
#: round takes at least one out; past that, the delivery splits the slice)
MAX_ROUNDS = 4
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: a field violation's path to a member: audience_members.audience_members[3].user_data...
_MEMBER = re.compile(r"audience_?members\[(\d+)\]", re.IGNORECASE)
#: field violations and error reasons that a spec field causes, whatever the members
_SYSTEMIC = (
    (re.compile(r"product_?destination_?id|INVALID_USER_LIST", re.I), "destination.user_list_id"),
    (re.compile(r"login_?account", re.I), "destination.login_account_id"),
    (re.compile(r"operating_?account|INVALID_DESTINATION", re.I), "destination.operating_account_id"),
    (
        re.compile(r"terms_?of_?service|TERMS_AND_CONDITIONS", re.I),
        "destination.customer_match_terms_accepted",
    ),
)
_CONSENT = {
    True: "CONSENT_GRANTED",
    False: "CONSENT_DENIED",
    "granted": "CONSENT_GRANTED",
    "denied": "CONSENT_DENIED",
}


class GoogleAudienceDestination:
    """Adds and removes one sync's members of one Customer Match user list."""

    def __init__(
        self, config: GoogleAudienceDestinationConfig, token: str, session: requests.Session | None = None
    ) -> None:
        self.config = config
        self.max_batch_size = config.batch_size
        self._token = token
        self._session = session or requests.Session()
        self._session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        destination: dict[str, Any] = {
            "operatingAccount": {
                "accountType": config.operating_account_type,
                "accountId": config.operating_account_id,
            },
            "productDestinationId": config.user_list_id,
        }
        if config.login_account_id:
            destination["loginAccount"] = {
                "accountType": config.login_account_type,
                "accountId": config.login_account_id,
            }
        self._destinations = [destination]

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        if not changes:
            return []
        if len(changes) > MAX_MEMBERS:
            raise ValueError(
                f"Data Manager takes at most {MAX_MEMBERS} members a request, got {len(changes)}"
            )
        # the delivery groups writes by whether they hold an id, so one call may mix actions:
        # removals (archive; release: a member whose identity changed gives its old identifiers up
        # in the plan's phase 1) go first, then the ingest
        outcomes: dict[str, Outcome] = {}
        removals = [c for c in changes if c.action in ("archive", "release")]
        upserts = [c for c in changes if c.action == "upsert"]
        if removals:
            outcomes.update((o.key, o) for o in self._remove_members(removals))
        if upserts:
            outcomes.update((o.key, o) for o in self._ingest_members(upserts))
        nothing = "an audience member holds only its identifiers; nothing to clear"
        return [outcomes.get(c.key) or Outcome(c.key, "skipped", reason=nothing) for c in changes]

    def close(self) -> None:
        self._session.close()

    # ---- what one write sends ------------------------------------------------------------------

    def _ingest_members(self, changes: Sequence[Change]) -> list[Outcome]:
        settled: dict[str, Outcome] = {}
        members: list[tuple[Change, dict[str, Any], str]] = []  # change, audience member, its identifiers
        moved: list[tuple[Change, list[dict[str, Any]]]] = []  # change, the identifiers it leaves
        for change in changes:
            identifiers, why = user_identifiers(change.record)
            unclear = [
                n
                for n in CONSENT_FIELDS
                if change.record.get(n) is not None and not isinstance(change.record[n], bool)
            ]
            if unclear and why is None:
                why = (
                    f"{', '.join(unclear)} is not true, false or null: consent is never guessed; map it "
                    "from a boolean column, or with transform: boolean"
                )
            if why is not None:
                settled[change.key] = Outcome(change.key, "rejected", reason=why)
                continue
            member_id = member_key(identifiers)
            members.append(
                (change, {"userData": {"userIdentifiers": identifiers}, **self._consent(change)}, member_id)
            )
            old = parse_member_key(change.destination_id)
            # a new e-mail (the identity) was released in phase 1; the same person with another phone
            # or address (or a sync without an identity) leaves its old identifiers here, first
            if (
                old
                and change.destination_id != member_id
                and (change.identity is None or _same_person(old, identifiers))
            ):
                moved.append((change, old))
        if moved:
            refused, _ = self._send(
                "remove", [{"userData": {"userIdentifiers": old}} for _, old in moved], [c for c, _ in moved]
            )
            for i, reason in refused.items():
                settled[moved[i][0].key] = Outcome(moved[i][0].key, "rejected", reason=reason)
            members = [m for m in members if m[0].key not in settled]
        if members:
            refused, request_id = self._send("ingest", [m for _, m, _ in members], [c for c, _, _ in members])
            for i, (change, _, member_id) in enumerate(members):
                settled[change.key] = (
                    Outcome(change.key, "rejected", reason=refused[i])
                    if i in refused
                    else self._taken(change, request_id, member_id, None)
                )
        return [settled[c.key] for c in changes]

    def _remove_members(self, changes: Sequence[Change]) -> list[Outcome]:
        settled: dict[str, Outcome] = {}
        known: list[tuple[Change, list[dict[str, Any]]]] = []
        for change in changes:
            old = parse_member_key(change.destination_id)
            if old:
                known.append((change, old))
            else:
                why = "no identifiers were recorded for this member; nothing to remove"
                settled[change.key] = Outcome(change.key, "skipped", reason=why)
        if known:
            refused, request_id = self._send(
                "remove", [{"userData": {"userIdentifiers": old}} for _, old in known], [c for c, _ in known]
            )
            for i, (change, _) in enumerate(known):
                settled[change.key] = (
                    Outcome(change.key, "rejected", reason=refused[i])
                    if i in refused
                    else self._taken(change, request_id, change.destination_id, False)
                )
        return [settled[c.key] for c in changes]

    def _taken(
        self, change: Change, request_id: str | None, member_id: str | None, created: bool | None
    ) -> Outcome:
        """Return the outcome of a member Google took: delivered, or, with validate_only, skipped
        (Google checked it and applied nothing: the snapshot must not say the list holds it)."""
        if self.config.validate_only:
            why = f"validate_only: Data Manager request {request_id} checked it and applied nothing"
            return Outcome(change.key, "skipped", reason=why)
        return Outcome(
            change.key, "delivered", member_id, reason=f"Data Manager request {request_id}", created=created
        )

    def _consent(self, change: Change) -> dict[str, Any]:
        fixed = self.config.consent
        given = {
            "adUserData": change.record.get("ad_user_data"),
            "adPersonalization": change.record.get("ad_personalization"),
        }
        defaults = {"adUserData": fixed.ad_user_data, "adPersonalization": fixed.ad_personalization}
        return {
            "consent": {
                name: _CONSENT[value if isinstance(value, bool) else defaults[name]]
                for name, value in given.items()
            }
        }

    # ---- requests ------------------------------------------------------------------------------

    def _send(
        self, operation: str, members: list[dict[str, Any]], sent: list[Change]
    ) -> tuple[dict[int, str], str | None]:
        """Send ``members`` to audienceMembers:<operation>; return the reason of each member Google
        named invalid (by its index in ``members``) and the request id of the request that took the
        rest. A request with an invalid member applies nothing: the rest are sent again without it."""
        refused: dict[int, str] = {}
        pending = list(range(len(members)))
        for _ in range(MAX_ROUNDS):
            body: dict[str, Any] = {
                "destinations": self._destinations,
                "audienceMembers": [members[i] for i in pending],
                "encoding": "HEX",
            }
            if operation == "ingest":
                body["termsOfService"] = {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
            if self.config.validate_only:
                body["validateOnly"] = True
            part = [sent[i] for i in pending]
            response = send(
                self._session,
                "POST",
                f"{self.config.url}/v1/audienceMembers:{operation}",
                f"Data Manager audienceMembers:{operation}",
                "destination.base_url",
                self.config.timeout_s,
                data=json.dumps(body, separators=(",", ":")).encode(),
            )
            if 200 <= response.status_code < 300:
                answer = json_body(response)
                request_id = str(answer.get("requestId") or "") if isinstance(answer, dict) else ""
                log.info(
                    "Data Manager took the request",
                    extra={
                        "destination": "google_audience",
                        "operation": operation,
                        "members": len(pending),
                        "google_request_id": request_id,
                        "validate_only": self.config.validate_only,
                    },
                )
                return refused, request_id or None
            named = self._members_named(operation, response, part)
            for j, reason in named.items():
                refused[pending[j]] = reason
            pending = [i for i in pending if i not in refused]
            if not pending:
                return refused, None
        raise RequestRejected(
            f"Data Manager audienceMembers:{operation} still named invalid members after {MAX_ROUNDS} requests"
        )

    # ---- answers: classified here and nowhere else -----------------------------------------------

    def _members_named(
        self, operation: str, response: requests.Response, sent: Sequence[Change]
    ) -> dict[int, str]:
        """Return the reason of each member a refusal names (by index in the request); raise the
        error a refusal of the whole request means."""
        status = response.status_code
        said = f"Data Manager audienceMembers:{operation} answered {status}"
        error = _error(response)
        code = str(error.get("status") or "")
        message = redact(str(error.get("message") or ""), sent, [self._token])[:300]
        reasons = _error_reasons(error)
        violations = _violations(error)
        for pattern, field in _SYSTEMIC:
            hits = [
                v for v in violations if pattern.search(str(v.get("field", "")) + str(v.get("reason", "")))
            ]
            if status < 500 and (hits or any(pattern.search(r) for r in reasons)):
                detail = "; ".join(self._violation(v, sent) for v in hits) or ", ".join(reasons)
                raise SystemicError(f"{said} {code}: {message} ({detail})", field)
        if status == 401:
            raise DestinationAuthError(
                f"{said} {code}: {message or 'unauthenticated'}. The access token is not valid or has expired "
                "(they last an hour): mint a new one with the scope "
                f"{SCOPE} (gcloud auth application-default print-access-token, or from a service account) "
                "and store it where destination.access_token points"
            )
        if status == 403:
            raise DestinationAuthError(
                f"{said} {code}: {message or 'permission denied'}. The token's user or service account may "
                "not manage this user list: give it access to destination.operating_account_id (through "
                "destination.login_account_id for a manager account), check the token has the scope "
                f"{SCOPE}, and that the Data Manager API is enabled in its Google Cloud project"
            )
        if status == 429:
            raise RateLimited(f"{said} {code or 'RESOURCE_EXHAUSTED'}: {message}", retry_after(response))
        if status >= 500:
            raise DestinationUnavailable(f"{said} {code}: {message}", retry_after(response))
        if status in (404, 405) or 300 <= status < 400:
            raise SystemicError(
                f"{said} {code}: no Data Manager audienceMembers:{operation} at this address",
                "destination.base_url",
            )
        named: dict[int, str] = {}
        for violation in violations:
            found = _MEMBER.search(str(violation.get("field", "")))
            index = int(found.group(1)) if found else -1
            if not 0 <= index < len(sent):
                named = {}
                break
            reason = self._violation(violation, [sent[index]])
            named[index] = reason if index not in named else f"{named[index]}; {reason}"[:REASON_CHARS]
        if named:
            return named
        detail = "; ".join(self._violation(v, sent) for v in violations[:3])
        if len(sent) == 1 and status == 400:
            return {0: f"Data Manager {code}: {message}" + (f" ({detail})" if detail else "")}
        raise RequestRejected(f"{said} {code}: {message}" + (f" ({detail})" if detail else ""))

    def _violation(self, violation: dict[str, Any], sent: Sequence[Change]) -> str:
        what = violation.get("reason") or "INVALID_ARGUMENT"
        text = f"Data Manager {what}: {violation.get('description') or violation.get('field') or ''}".strip(
            ": "
        )
        return redact(text, sent, [self._token])[:REASON_CHARS]


# ---- members --------------------------------------------------------------------------------------


def user_identifiers(record: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """Return a record's userIdentifiers, or why it cannot be sent (a reason naming fields, never
    values): no identifier at all, or a hashed field whose value is not a SHA-256 hex digest."""

    def text(name: str) -> str:
        value = record.get(name)
        return "" if value is None else str(value).strip()

    unhashed = sorted(n for n in HASHED if text(n) and not _HEX64.match(text(n).lower()))
    if unhashed:
        return [], (
            f"{', '.join(unhashed)} is not a SHA-256 hex digest; syncback hashes it in the warehouse, "
            "so this value was not sent"
        )
    identifiers: list[dict[str, Any]] = []
    if text("email"):
        identifiers.append({"emailAddress": text("email").lower()})
    if text("phone"):
        identifiers.append({"phoneNumber": text("phone").lower()})
    if all(text(n) for n in ADDRESS):
        identifiers.append(
            {
                "address": {
                    "givenName": text("given_name").lower(),
                    "familyName": text("family_name").lower(),
                    "regionCode": text("region_code").upper(),
                    "postalCode": text("postal_code"),
                }
            }
        )
    if not identifiers:
        return [], "no identifier: email, phone and the address (all four of its fields) are empty"
    return identifiers, None


def _same_person(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> bool:
    """Whether two members share their identity: the e-mail, else the phone (hashed)."""

    def identity(identifiers: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((i for i in identifiers if "emailAddress" in i or "phoneNumber" in i), None)

    return identity(old) is not None and identity(old) == identity(new)


def member_key(identifiers: list[dict[str, Any]]) -> str:
    """Return the destination id of a member: its identifiers, compact (``e=<hash>|p=<hash>|a=<given
    hash>,<family hash>,<region>,<postal code>``, region and postal code percent-encoded)."""
    parts = []
    for identifier in identifiers:
        if "emailAddress" in identifier:
            parts.append(f"e={identifier['emailAddress']}")
        elif "phoneNumber" in identifier:
            parts.append(f"p={identifier['phoneNumber']}")
        else:
            address = identifier["address"]
            values = [
                address["givenName"],
                address["familyName"],
                address["regionCode"],
                address["postalCode"],
            ]
            parts.append("a=" + ",".join(quote(str(v), safe="") for v in values))
    return "|".join(parts)


def parse_member_key(destination_id: str | None) -> list[dict[str, Any]] | None:
    """Return the identifiers a destination id holds, or None when it holds none it can name."""
    identifiers: list[dict[str, Any]] = []
    for part in (destination_id or "").split("|"):
        kind, _, value = part.partition("=")
        values = [unquote(v) for v in value.split(",")]
        if kind == "e" and _HEX64.match(value):
            identifiers.append({"emailAddress": value})
        elif kind == "p" and _HEX64.match(value):
            identifiers.append({"phoneNumber": value})
        elif kind == "a" and len(values) == 4 and all(values):
            names = ("givenName", "familyName", "regionCode", "postalCode")
            identifiers.append({"address": dict(zip(names, values, strict=True))})
        else:
            return None
    return identifiers or None


def _error(response: requests.Response) -> dict[str, Any]:
    body = json_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    details = error.get("details")
    return [
        d
        for d in (details if isinstance(details, list) else [])
        if isinstance(d, dict) and str(d.get("@type", "")).endswith(kind)
    ]


def _violations(error: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for detail in _details(error, "google.rpc.BadRequest"):
        violations = detail.get("fieldViolations")
        found += [v for v in (violations if isinstance(violations, list) else []) if isinstance(v, dict)]
    return found


def _error_reasons(error: dict[str, Any]) -> list[str]:
    return [str(d["reason"]) for d in _details(error, "google.rpc.ErrorInfo") if d.get("reason")]
