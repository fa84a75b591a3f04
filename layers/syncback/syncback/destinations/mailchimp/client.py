"""Mailchimp audience members: batch subscribe at most 500 a request, then update those that exist.

- written by identifier (``email_address``): ``POST /3.0/lists/{list_id}`` with
  ``update_existing: false`` and ``status`` = the spec's ``status_for_new``: new members are created
  (``new_members``), existing ones are left untouched and named in ``errors`` (``ERROR_CONTACT_EXISTS``),
  other refusals too (``error``, ``error_code``), all in a 200. The batch endpoint takes a
  ``status`` for every member and, with ``update_existing: true``, changes existing members' status
  to it: it cannot say "this status only if new". So the members that exist are then written one by
  one, ``PUT /3.0/lists/{list_id}/members/{subscriber_hash}`` with ``status_if_new`` and no
  ``status``: their status, the person's consent, is never sent;
- written by the subscriber hash the snapshot holds: ``PATCH .../members/{hash}`` (no status); a
  new address moves the member (``email_address``), with its status, instead of adding a second;
  a member no longer there (404) is ``gone``, and the delivery writes it again by its address;
- tags (``tags.<name>``: true adds, false removes) of an existing member:
  ``POST .../members/{hash}/tags``; a new member gets its tags in the batch;
- removed (mirror): ``DELETE .../members/{hash}`` archives, or ``PATCH`` ``status: unsubscribed``,
  as the spec's ``removal`` says.

HTTP Basic with any user name and the API key. Whole-request errors are problem+json
(``title``, ``detail``); a 403 without one is taken for Mailchimp's throttle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import requests

from syncback.destinations.base import Change, Outcome
from syncback.destinations.http import json_body, redact, retry_after, send
from syncback.destinations.mailchimp import IDENTIFIER, MailchimpDestinationConfig
from syncback.errors import (
    DestinationAuthError,
    DestinationUnavailable,
    RateLimited,
    RequestRejected,
    SystemicError,
)

MAX_MEMBERS = 500
EXISTS = "ERROR_CONTACT_EXISTS"
#: no Retry-After is documented: how long a 429 or a throttling 403 waits
THROTTLE_WAIT_S = 5.0
#: the values of a ``tags.<name>`` field that remove the tag (any other adds it; null leaves it)
_FALSE = {"false", "0", "no", "f", "n", ""}


def subscriber_hash(email: Any) -> str:
    """Return the subscriber hash Mailchimp addresses a member by: MD5 of the lower-cased address."""
    return hashlib.md5(str(email or "").strip().lower().encode(), usedforsecurity=False).hexdigest()


class MailchimpDestination:
    """Writes one sync's records to the members of one Mailchimp audience."""

    max_batch_size = MAX_MEMBERS

    def __init__(
        self,
        config: MailchimpDestinationConfig,
        api_key: str,
        url: str,
        session: requests.Session | None = None,
    ) -> None:
        self.config = config
        self._session = session or requests.Session()
        self._session.auth = ("syncback", api_key)
        self._session.headers.update({"Content-Type": "application/json"})
        self._secret = api_key
        self._list = f"{url.rstrip('/')}/3.0/lists/{config.list_id}"

    def write(self, changes: Sequence[Change], scope: str = "") -> list[Outcome]:
        if not changes:
            return []
        if len(changes) > MAX_MEMBERS:
            raise ValueError(f"Mailchimp takes at most {MAX_MEMBERS} members a request, got {len(changes)}")
        if changes[0].action == "archive":
            return [self._remove(c) for c in changes]
        if changes[0].destination_id is None:
            return self._subscribe(changes)
        done = {c.key: self._write_by_hash(c) for c in _moves_in_order(changes)}
        return [done[c.key] for c in changes]

    def close(self) -> None:
        self._session.close()

    # ---- by address: the batch, then the members that exist ----------------------------------

    def _subscribe(self, changes: Sequence[Change]) -> list[Outcome]:
        skipped = {
            c.key: Outcome(c.key, "skipped", reason="no Mailchimp member was recorded for this record")
            for c in changes
            if c.action != "upsert"  # clear or release a member we hold no hash of: nothing to do
        }
        todo = [c for c in changes if c.key not in skipped]
        if not todo:
            return list(skipped.values())
        members = [
            {**self._member(c), "status": self.config.status_for_new, "tags": _active(c)} for c in todo
        ]
        response = self._request("POST", "", todo, json={"members": members, "update_existing": False})
        self._raise_for_request(response, todo)
        body = _json(response)
        by_address = {_address(c.record.get(IDENTIFIER)): c for c in todo}
        done: dict[str, Outcome] = {}
        for member in body.get("new_members") or []:
            change = by_address.get(_address(member.get("email_address")))
            if change is not None:
                hashed = str(member.get("id") or subscriber_hash(member.get("email_address")))
                done[change.key] = Outcome(change.key, "delivered", hashed, created=True)
        existing = []
        for error in body.get("errors") or []:
            change = by_address.get(_address(error.get("email_address")))
            if change is None or change.key in done:
                continue
            if error.get("error_code") == EXISTS:
                existing.append(change)
            else:
                said = f"{error.get('error_code') or 'ERROR'}: {error.get('error') or ''}"
                done[change.key] = Outcome(change.key, "rejected", reason=redact(said, [change])[:500])
        for change in existing:
            done[change.key] = self._update_existing(change)
        return [
            skipped.get(c.key)
            or done.get(c.key)
            or Outcome(c.key, "rejected", reason="Mailchimp's answer did not mention this member")
            for c in changes
        ]

    def _update_existing(self, change: Change) -> Outcome:
        """Write a member that exists, its status untouched (``status_if_new`` is the only one sent)."""
        hashed = subscriber_hash(change.record.get(IDENTIFIER))
        body = {**self._member(change), "status_if_new": self.config.status_for_new}
        response = self._request("PUT", f"/members/{hashed}", [change], json=body)
        refused = self._member_refused(response, change)
        if refused is not None:
            return refused
        return self._tagged(change, hashed, created=False)

    # ---- by subscriber hash: the member this sync wrote before -----------------------------------

    def _write_by_hash(self, change: Change) -> Outcome:
        hashed = str(change.destination_id)
        body = self._member(change)  # a release empties the merge fields; the address is the member
        if change.action == "upsert" and subscriber_hash(change.record.get(IDENTIFIER)) == hashed:
            body.pop(IDENTIFIER, None)  # the same address: nothing to move
        response = self._request("PATCH", f"/members/{hashed}", [change], json=body)
        if response.status_code == 404:
            return Outcome(change.key, "gone", reason="no longer a member of the Mailchimp audience")
        refused = self._member_refused(response, change)
        if refused is not None:
            return refused
        moved = _json(response).get("id") or (
            subscriber_hash(change.record[IDENTIFIER]) if change.record.get(IDENTIFIER) else hashed
        )
        return self._tagged(change, str(moved), created=None)

    def _remove(self, change: Change) -> Outcome:
        if change.destination_id is None:
            why = "no Mailchimp member was recorded for this record; nothing to remove"
            return Outcome(change.key, "skipped", reason=why)
        path = f"/members/{change.destination_id}"
        if self.config.removal == "archive":
            response = self._request("DELETE", path, [change])
        else:
            response = self._request("PATCH", path, [change], json={"status": "unsubscribed"})
        if response.status_code == 404:  # archived or deleted there since: nothing left to do
            return Outcome(change.key, "delivered", change.destination_id, created=False)
        refused = self._member_refused(response, change)
        return refused or Outcome(change.key, "delivered", change.destination_id, created=False)

    def _tagged(self, change: Change, hashed: str, created: bool | None) -> Outcome:
        """Write the member's mapped tags (an existing member's are not in its PUT or PATCH)."""
        tags = _tags(change)
        if tags:
            response = self._request("POST", f"/members/{hashed}/tags", [change], json={"tags": tags})
            refused = self._member_refused(response, change)
            if refused is not None:
                return refused
        return Outcome(change.key, "delivered", hashed, created=created)

    def _member(self, change: Change) -> dict[str, Any]:
        """Return the member fields a change writes (merge fields nested), tags and status aside."""
        member: dict[str, Any] = {}
        for name, value in change.record.items():
            if name.startswith("merge_fields."):
                # Mailchimp empties a merge field given ""; null has no documented meaning
                member.setdefault("merge_fields", {})[name.removeprefix("merge_fields.")] = (
                    "" if value is None else value
                )
            elif not name.startswith("tags.") and value is not None:
                member[name] = str(value).strip() if name == IDENTIFIER else value
        return member

    # ---- requests, and what their answers mean -------------------------------------------------

    def _request(self, method: str, path: str, sent: Sequence[Change], **kwargs: Any) -> requests.Response:
        who = "Mailchimp " + ("batch subscribe" if not path else path.split("/")[1])
        return send(
            self._session,
            method,
            self._list + path,
            who,
            "destination.base_url",
            self.config.timeout_s,
            **kwargs,
        )

    def _member_refused(self, response: requests.Response, change: Change) -> Outcome | None:
        """Return the rejection of one member's request refused for its content (400), else None;
        raise for what is not the member's fault."""
        if response.status_code == 400:
            return Outcome(change.key, "rejected", reason=self._problem(response, [change]))
        self._raise_for_request(response, [change])
        return None

    def _raise_for_request(self, response: requests.Response, sent: Sequence[Change]) -> None:
        """Raise the error a whole-request failure means; return for 2xx."""
        status = response.status_code
        if status < 300:
            return
        said = f"Mailchimp answered {status}"
        problem = self._problem(response, sent)
        if status == 401 or (status == 403 and problem):
            raise DestinationAuthError(
                f"{said}: {problem or response.reason}. Check destination.api_key: the whole key, "
                "with its data centre (…-us6), not revoked, of a user who may manage the audience"
            )
        if status in (403, 429):
            # a 403 without a problem document: the throttle under heavy load (no Retry-After)
            raise RateLimited(
                f"{said}: {problem or 'too many requests'}", retry_after(response) or THROTTLE_WAIT_S
            )
        if status >= 500:
            raise DestinationUnavailable(f"{said}: {problem}", retry_after(response))
        if status in (404, 405) or 300 <= status < 400:
            raise SystemicError(
                f"{said}: {problem}; no audience {self.config.list_id} at this address", "destination.list_id"
            )
        raise RequestRejected(f"{said}: {problem}")

    def _problem(self, response: requests.Response, sent: Sequence[Change]) -> str:
        """Return a problem+json answer's title and detail, the records' values and the key redacted."""
        body = _json(response)
        text = f"{body.get('title') or ''}: {body.get('detail') or ''}".strip(": ")
        return redact(text, sent, [self._secret])[:500]


def _moves_in_order(changes: Sequence[Change]) -> list[Change]:
    """Return ``changes`` (written by hash) so that a member moving to an address another of them
    holds now comes after that one has moved away (a chain a→b, b→c: b→c first). Members trading
    addresses (a cycle) cannot all go first: Mailchimp refuses them while the address is held."""
    moving_from = {str(c.destination_id): c.key for c in changes}
    after: dict[str, str] = {}  # key → the key it waits for
    for change in changes:
        address = change.record.get(IDENTIFIER)
        target = subscriber_hash(address) if address else None
        holder = moving_from.get(target) if target and target != change.destination_id else None
        if holder is not None:
            after[change.key] = holder
    ordered: list[Change] = []
    placed: set[str] = set()
    pending = list(changes)
    while pending:
        ready = [c for c in pending if after.get(c.key) in placed or c.key not in after]
        batch = ready or pending[:1]  # a cycle: one of them goes, and is refused
        for change in batch:
            ordered.append(change)
            placed.add(change.key)
        pending = [c for c in pending if c.key not in placed]
    return ordered


def _tags(change: Change) -> list[dict[str, str]]:
    """Return the mapped tags as Mailchimp's tags endpoint takes them: active, or inactive (removed);
    a clear removes them, a null leaves them as they are."""
    tags = []
    for name, value in change.record.items():
        if name.startswith("tags."):
            on = _truth(value)
            if change.action in ("clear", "release"):
                on = False
            if on is not None:
                tags.append({"name": name.removeprefix("tags."), "status": "active" if on else "inactive"})
    return tags


def _active(change: Change) -> list[str]:
    return [t["name"] for t in _tags(change) if t["status"] == "active"]


def _truth(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() not in _FALSE


def _address(value: Any) -> str:
    return str(value or "").strip().lower()


def _json(response: requests.Response) -> dict[str, Any]:
    body = json_body(response)
    return body if isinstance(body, dict) else {}
