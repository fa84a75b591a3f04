"""The Google Data Manager API's audience members on loopback, as Google documents
``audienceMembers:ingest`` and ``audienceMembers:remove`` (a test fake: production code never
imports it).

- ``POST /v1/audienceMembers:ingest`` and ``:remove`` with ``destinations`` (1 to 10, each an
  ``operatingAccount`` {accountType, accountId}, an optional ``loginAccount`` and a
  ``productDestinationId``: a user list of that account), ``audienceMembers`` (1 to ``max_members``,
  10,000), ``encoding`` (HEX), ``validateOnly``; an ingest needs ``termsOfService``
  {customerMatchTermsOfServiceStatus: ACCEPTED}. Answers ``{"requestId": "<uuid>"}``.
- A member is ``userData.userIdentifiers`` (1 to 10), each exactly one of ``emailAddress``,
  ``phoneNumber`` (SHA-256 hex digests: INVALID_HEX_ENCODING, or INVALID_SHA256_FORMAT for hex of
  another length) or ``address`` (``givenName``, ``familyName`` hashed the same way, ``regionCode``
  two capital letters, ``postalCode``: each required), and a ``consent`` of CONSENT_GRANTED /
  CONSENT_DENIED values.
- Any invalid member refuses the whole request, 400 INVALID_ARGUMENT, nothing applied, with a
  ``google.rpc.BadRequest`` field violation per problem naming the member
  (``audience_members.audience_members[3].user_data.user_identifiers``); a problem of the request
  itself (too many members, a wrong destination, terms not accepted) names no member.
- Errors are google.rpc.Status: ``{"error": {"code", "message", "status", "details": [ErrorInfo,
  BadRequest]}}``: 401 UNAUTHENTICATED (not the token), 403 PERMISSION_DENIED (an account the token
  may not reach), 429 RESOURCE_EXHAUSTED (``requests_per_window`` in fixed windows: Google's 300 a
  minute per Cloud project, scaled down), 503 UNAVAILABLE.
- The list holds members as they were sent: an ingest of identifiers already there is the same
  member (its consent updated); a removal takes away every member sharing any of its identifiers
  (an e-mail hash, a phone hash or a whole address), as Google removes the person they match
  (Google documents no finer rule). ``validateOnly`` checks and applies nothing.

Fault knobs: ``reject_values`` (a member whose hashed identifiers hash one of them, normalised as
Google says, is an invalid member), ``fail_next`` (answer the next requests so), random 429s, 503s
and answers too late (after the work). ``FAKE`` is its view for the contract suites: a member holds
no customer id and no attributes, so the view sends the model's key as the address's postal code
(a value Google takes in plain) and shows nothing of the other generic fields (``stored``: None).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from typing import Any, ClassVar
from urllib.parse import quote

import requests

from tests.fakes.contract import Knobs, RandomFaults
from tests.fakes.loopback import Answer, LoopbackServer

TOKEN = "ya29.contract-google-access-token"
ACCOUNT, USER_LIST = "1234567890", "5550001"
MAX_MEMBERS, MAX_IDENTIFIERS, MAX_DESTINATIONS = 10_000, 10, 10
CONSENT = ("CONSENT_GRANTED", "CONSENT_DENIED")
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_REGION = re.compile(r"^[A-Z]{2}$")
#: the generic fields the contract suites map that a member cannot hold: shown as None
NOT_HELD = ("firstname", "score", "big", "lead_score", "last_seen", "source", "score_text")
#: the view's constant address parts: a member needs all four for the postal code to carry the key
GIVEN, FAMILY, REGION = "contract", "view", "US"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def normalised_email(value: str) -> str:
    """Return an address as Google says to hash it: no white space, lower case, and no dots before
    the @ of a gmail.com or googlemail.com address."""
    address = "".join(value.split()).lower()
    local, at, domain = address.rpartition("@")
    if at and domain in ("gmail.com", "googlemail.com"):
        address = local.replace(".", "") + "@" + domain
    return address


class GoogleAudienceFake(LoopbackServer, Knobs):
    """The audience members of the user lists of some Google Ads accounts, and its contract view."""

    name = "google_audience"
    identifier = "email"
    env: ClassVar[dict[str, str]] = {"CONTRACT_GOOGLE_TOKEN": TOKEN}
    by_hand = False  # a member someone else added is indistinguishable: mirror needs a list of its own
    deletes_by_hand = False  # nothing to delete by hand that syncback could learn of
    holds = frozenset({"email", "customer_id"})

    def __init__(
        self,
        requests_per_window: int | None = None,
        window_s: float = 1.0,
        max_members: int = MAX_MEMBERS,
        accounts: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.requests_per_window = requests_per_window
        self.window_s = window_s
        self.max_members = max_members
        #: account id → its user lists, all reachable with ``TOKEN``
        self.accounts = accounts if accounts is not None else {ACCOUNT: (USER_LIST,)}
        #: (account, user list) → members by their identifiers (canonical JSON): identifiers, consent
        self.lists: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        #: every operation and parsed body that passed the token and the rate limit
        self.received: list[tuple[str, Any]] = []
        self.reject_values: set[str] = set()
        self.random_faults: RandomFaults | None = None
        self.late_s = 2.5
        self.counts = {
            "requests": 0,
            "created": 0,
            "removed": 0,
            "429": 0,
            "ingest": 0,
            "remove": 0,
            "400": 0,
        }
        self._next: deque[Answer] = deque()
        self._window = (0.0, 0)
        self._lock = threading.Lock()
        super().__init__()

    def fail_next(
        self, status: int, body: dict[str, Any], n: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``n`` requests with ``status`` and ``body`` (after the token is checked)."""
        with self._lock:
            self._next.extend(
                [(status, {"content-type": "application/json", **(headers or {})}, json.dumps(body).encode())]
                * n
            )

    def members(self, account: str = ACCOUNT, user_list: str = USER_LIST) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self.lists.get((account, user_list), {}))

    # ---- one request ---------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        path = target.split("?", 1)[0]
        with self._lock:
            self.counts["requests"] += 1
            if headers.get("authorization", "") != f"Bearer {TOKEN}":
                return _status(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                    "cookie or other valid authentication credential.",
                )
            operation = path.removeprefix("/v1/audienceMembers:")
            if method != "POST" or operation not in ("ingest", "remove"):
                return _status(404, "NOT_FOUND", f"Requested entity was not found: {path}")
            if self._rate_limited():
                self.counts["429"] += 1
                return _status(
                    429, "RESOURCE_EXHAUSTED", "Quota exceeded for requests per minute.", "RESOURCE_EXHAUSTED"
                )
            if self._next:
                return self._next.popleft()
            fault = self.random_faults.draw() if self.random_faults else None
            if fault == "429":
                self.counts["429"] += 1
                return _status(429, "RESOURCE_EXHAUSTED", "Too many requests.", "RESOURCE_EXHAUSTED")
            if fault == "5xx":
                return _status(503, "UNAVAILABLE", "The service is currently unavailable.", "INTERNAL_ERROR")
            try:
                payload = json.loads(body)
                assert isinstance(payload, dict)
            except (ValueError, AssertionError):
                return _status(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
            self.received.append((operation, payload))
            answer = self._apply(operation, payload)
        if fault == "late":  # done, and answered after the client gave up
            time.sleep(self.late_s)
        return answer

    def _apply(self, operation: str, payload: dict[str, Any]) -> Answer:
        refused = self._request_problem(operation, payload)
        if refused is not None:
            self.counts["400"] += refused[0] == 400
            return refused
        members = payload["audienceMembers"]
        violations = [v for i, m in enumerate(members) for v in self._member_problems(operation, i, m)]
        if violations:
            self.counts["400"] += 1
            return _status(
                400,
                "INVALID_ARGUMENT",
                "There was a problem with the request.",
                "INVALID_ARGUMENT",
                violations,
            )
        self.counts[operation] += 1
        if not payload.get("validateOnly"):
            for destination in payload["destinations"]:
                where = (destination["operatingAccount"]["accountId"], destination["productDestinationId"])
                held = self.lists.setdefault(where, {})
                for member in members:
                    key = _member_key(member["userData"]["userIdentifiers"])
                    if operation == "remove":
                        # Google removes the person the identifiers match: any member sharing one
                        gone = _matching(held, member["userData"]["userIdentifiers"])
                        for match in gone:
                            del held[match]
                        self.counts["removed"] += len(gone)
                    else:
                        self.counts["created"] += key not in held
                        held[key] = {
                            "identifiers": member["userData"]["userIdentifiers"],
                            "consent": member.get("consent"),
                        }
        return (
            200,
            {"content-type": "application/json"},
            json.dumps({"requestId": str(uuid.uuid4())}).encode(),
        )

    def _request_problem(self, operation: str, payload: dict[str, Any]) -> Answer | None:
        destinations = payload.get("destinations")
        if not isinstance(destinations, list) or not destinations:
            return _bad(
                [
                    _violation(
                        "destinations", "REQUIRED_FIELD_MISSING", "At least one destination is required."
                    )
                ]
            )
        if len(destinations) > MAX_DESTINATIONS:
            return _bad(
                [
                    _violation(
                        "destinations",
                        "TOO_MANY_DESTINATIONS",
                        "Maximum number of destinations allowed per request is 10.",
                    )
                ]
            )
        for n, destination in enumerate(destinations):
            account = ((destination or {}).get("operatingAccount") or {}).get("accountId")
            if account not in self.accounts:
                return _status(
                    403, "PERMISSION_DENIED", "The caller does not have permission", "PERMISSION_DENIED"
                )
            if destination.get("productDestinationId") not in self.accounts[account]:
                return _bad(
                    [
                        _violation(
                            f"destinations.destinations[{n}].product_destination_id",
                            "INVALID_USER_LIST_ID",
                            "User list is not valid.",
                        )
                    ]
                )
        members = payload.get("audienceMembers")
        if not isinstance(members, list) or not members:
            return _bad(
                [_violation("audience_members", "REQUIRED_FIELD_MISSING", "Required field is missing.")]
            )
        if len(members) > self.max_members:
            return _bad(
                [
                    _violation(
                        "audience_members",
                        "TOO_MANY_AUDIENCE_MEMBERS",
                        f"Maximum number of audience members allowed per request is {self.max_members:,}.",
                    )
                ]
            )
        if payload.get("encoding") != "HEX":
            return _bad([_violation("encoding", "INVALID_ENUM_VALUE", "This fake takes HEX encoding.")])
        terms = (payload.get("termsOfService") or {}).get("customerMatchTermsOfServiceStatus")
        if operation == "ingest" and terms != "ACCEPTED":
            return _status(
                400,
                "INVALID_ARGUMENT",
                "Required terms and conditions are not accepted.",
                "TERMS_AND_CONDITIONS_NOT_SIGNED",
                [
                    _violation(
                        "terms_of_service",
                        "TERMS_AND_CONDITIONS_NOT_SIGNED",
                        "Required terms and conditions are not accepted.",
                    )
                ],
            )
        return None

    def _member_problems(self, operation: str, index: int, member: Any) -> list[dict[str, str]]:
        where = f"audience_members.audience_members[{index}]"
        identifiers = (
            ((member or {}).get("userData") or {}).get("userIdentifiers")
            if isinstance(member, dict)
            else None
        )
        if not isinstance(identifiers, list) or not identifiers:
            return [_violation(f"{where}.user_data", "REQUIRED_FIELD_MISSING", "Required field is missing.")]
        if len(identifiers) > MAX_IDENTIFIERS:
            return [
                _violation(
                    f"{where}.user_data",
                    "TOO_MANY_USER_IDENTIFIERS",
                    "Maximum number of user identifiers allowed per audience member is 10.",
                )
            ]
        problems = []
        for identifier in identifiers:
            kinds = [k for k in ("emailAddress", "phoneNumber", "address") if k in (identifier or {})]
            if len(kinds) != 1:
                problems.append(
                    _violation(
                        f"{where}.user_data.user_identifiers",
                        "INVALID_FORMAT",
                        "Exactly one identifier each.",
                    )
                )
                continue
            value = identifier[kinds[0]]
            if kinds[0] == "address":
                problems += _address_problems(f"{where}.user_data.user_identifiers", value)
            else:
                problem = _hash_problem(f"{where}.user_data.user_identifiers", value, kinds[0])
                problems += [problem] if problem else []
        if operation == "ingest":
            consent = member.get("consent") or {}
            if any(consent.get(k) not in (None, *CONSENT) for k in ("adUserData", "adPersonalization")):
                problems.append(
                    _violation(f"{where}.consent", "INVALID_ENUM_VALUE", "Enum value cannot be used.")
                )
        # the knob refuses by content what is uploaded: a removal is checked for its form only
        if not problems and operation == "ingest" and self._rejected(identifiers):
            problems.append(
                _violation(where, "INVALID_AUDIENCE_MEMBER", "This audience member is not valid.")
            )
        return problems

    def _rejected(self, identifiers: list[dict[str, Any]]) -> bool:
        if not self.reject_values:
            return False
        hashes = {sha256(normalised_email(v)) for v in self.reject_values} | {
            sha256(v.strip().lower()) for v in self.reject_values
        }
        sent = {str(i.get("emailAddress") or i.get("phoneNumber") or "").lower() for i in identifiers}
        return bool(hashes & sent)

    def _rate_limited(self) -> bool:
        now = time.time()
        start = math.floor(now / self.window_s) * self.window_s
        used = self._window[1] if self._window[0] == start else 0
        if self.requests_per_window is not None and used >= self.requests_per_window:
            return True
        self._window = (start, used + 1)
        return False

    # ---- the contract suites' view -------------------------------------------------------------

    def destination(self) -> dict[str, Any]:
        return {
            "type": "google_audience",
            "operating_account_id": ACCOUNT,
            "user_list_id": USER_LIST,
            "access_token": "env:CONTRACT_GOOGLE_TOKEN",
            "consent": {"ad_user_data": "granted", "ad_personalization": "granted"},
            "customer_match_terms_accepted": True,
            "dedicated_audience": True,
            "base_url": self.url,
            "rate_limit": {"requests": 10_000, "per_seconds": 1},
            "timeout_s": 2,
        }

    def mapping(self, generic: dict[str, Any], key_column: str) -> dict[str, Any]:
        # a member is its identifiers: the e-mail, and an address whose postal code carries the key
        # (the warehouse normalises and hashes email, given_name and family_name: Kind.hashed)
        key = generic.get("customer_id", key_column)
        return {
            "email": generic["email"],
            "postal_code": {"column": key if isinstance(key, str) else key_column},
            "given_name": {"value": GIVEN},
            "family_name": {"value": FAMILY},
            "region_code": {"value": REGION},
        }

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for held in self.lists.values():
                for key, member in held.items():
                    record: dict[str, Any] = {"id": key, "email": None, "customer_id": None}
                    record.update(dict.fromkeys(NOT_HELD))
                    for identifier in member["identifiers"]:
                        if "emailAddress" in identifier:
                            record["email"] = identifier["emailAddress"]
                        if "address" in identifier:
                            record["customer_id"] = identifier["address"]["postalCode"]
                    out.append(record)
            return out

    def stored(self, field: str, value: Any) -> Any:
        if value is None or value == "":
            return None
        if field == "email":
            text = str(value)
            return text if re.fullmatch(r"[0-9a-f]{64}", text) else sha256(normalised_email(text))
        if field == "customer_id":
            return str(value)
        return None  # a member holds nothing else

    def identity(self, value: Any) -> str:
        return "" if value is None or not str(value).strip() else str(self.stored("email", value))

    def writes(self, request: requests.PreparedRequest) -> bool:
        return "/v1/audienceMembers:" in (request.path_url or "")


def _matching(held: dict[str, dict[str, Any]], identifiers: list[dict[str, Any]]) -> list[str]:
    """Return the keys of the members sharing any identifier with ``identifiers``."""
    wanted = {json.dumps(i, sort_keys=True) for i in identifiers}
    return [
        key
        for key, member in held.items()
        if wanted & {json.dumps(i, sort_keys=True) for i in member["identifiers"]}
    ]


def _member_key(identifiers: list[dict[str, Any]]) -> str:
    """Return a member's key: its identifiers, in the compact form syncback records as the member's
    destination id (Google has no member id), so that the suites find the member the snapshot names."""
    parts = []
    for identifier in identifiers:
        if "emailAddress" in identifier:
            parts.append(f"e={identifier['emailAddress']}")
        elif "phoneNumber" in identifier:
            parts.append(f"p={identifier['phoneNumber']}")
        else:
            address = identifier["address"]
            values = [address[k] for k in ("givenName", "familyName", "regionCode", "postalCode")]
            parts.append("a=" + ",".join(quote(str(v), safe="") for v in values))
    return "|".join(parts)


def _hash_problem(field: str, value: Any, kind: str) -> dict[str, str] | None:
    name = "Email" if kind == "emailAddress" else "Phone number"
    if not isinstance(value, str) or not value or not _HEX.match(value):
        return _violation(field, "INVALID_HEX_ENCODING", f"{name} is not hex encoded.")
    if len(value) != 64:
        return _violation(field, "INVALID_SHA256_FORMAT", "The SHA256 encoded value is malformed.")
    return None


def _address_problems(field: str, address: Any) -> list[dict[str, str]]:
    if not isinstance(address, dict):
        return [_violation(f"{field}.address", "INVALID_FORMAT", "Format is invalid.")]
    problems = []
    for part in ("givenName", "familyName", "regionCode", "postalCode"):
        if not address.get(part):
            problems.append(
                _violation(f"{field}.address.{part}", "REQUIRED_FIELD_MISSING", "Required field is missing.")
            )
    for part in ("givenName", "familyName"):
        value = address.get(part)
        if value and (not _HEX.match(str(value)) or len(str(value)) != 64):
            problems.append(
                _violation(
                    f"{field}.address.{part}",
                    "INVALID_SHA256_FORMAT",
                    "The SHA256 encoded value is malformed.",
                )
            )
    if address.get("regionCode") and not _REGION.match(str(address["regionCode"])):
        problems.append(_violation(f"{field}.address.region_code", "INVALID_FORMAT", "Format is invalid."))
    return problems


def _violation(field: str, reason: str, description: str) -> dict[str, str]:
    return {"field": field, "description": description, "reason": reason}


def _bad(violations: list[dict[str, str]]) -> Answer:
    return _status(
        400, "INVALID_ARGUMENT", "There was a problem with the request.", "INVALID_ARGUMENT", violations
    )


def _status(
    code: int,
    status: str,
    message: str,
    reason: str | None = None,
    violations: list[dict[str, str]] | None = None,
) -> Answer:
    details: list[dict[str, Any]] = []
    if reason:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "datamanager.googleapis.com",
            }
        )
    if violations:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations})
    body = {"error": {"code": code, "message": message, "status": status, "details": details}}
    return code, {"content-type": "application/json; charset=UTF-8"}, json.dumps(body).encode()


FAKE = GoogleAudienceFake
