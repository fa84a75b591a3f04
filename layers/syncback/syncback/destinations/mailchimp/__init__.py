"""Mailchimp audience members, written in batches of at most 500: the spec's ``type: mailchimp``.

A member is its e-mail address: Mailchimp addresses it by the MD5 of the lower-cased address (the
subscriber hash), which is the destination id the snapshot keeps. Consent is Mailchimp's, never the
warehouse's: a sync gives a new member the status the spec names (``status_for_new``) and never
sends an existing member's status, so an unsubscribed or cleaned member stays so.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from syncback.destinations.registry import Kind, register
from syncback.spec_parts import URL_PATTERN, DestinationBase, SecretRef, https, secret_ref

if TYPE_CHECKING:
    import requests

    from syncback.destinations.base import Destination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec

#: the mapped field that finds a member
IDENTIFIER = "email_address"
#: the other member fields a sync may write besides ``merge_fields.<TAG>`` and ``tags.<name>``;
#: never ``status``: consent is given or withdrawn by the person, in Mailchimp
MEMBER_FIELDS = (IDENTIFIER, "language", "vip", "email_type")
MERGE_TAG = re.compile(r"^merge_fields\.[A-Z0-9_]{1,10}$")
TAG = re.compile(r"^tags\.[^\s,][^,]{0,99}$")
#: the Marketing API's "limit of 10 concurrent connections for your API key"
MAX_CONNECTIONS = 10
_KEY = re.compile(r"^[0-9a-f]+-([a-z]+[0-9]+)$")


class MailchimpDestinationConfig(DestinationBase):
    """Members of one Mailchimp audience, subscribed or updated in batches of at most 500."""

    type: Literal["mailchimp"]
    list_id: str = Field(pattern=r"^[0-9a-zA-Z]+$", description="the audience id (Audience settings)")
    api_key: SecretRef = Field(
        description="an API key, as env:NAME or secret:NAME (its -us6 names the data centre)"
    )
    status_for_new: Literal["subscribed", "pending", "transactional"] = Field(
        description="the status a member the sync adds gets: subscribed (they opted in where you "
        "collected the address), pending (Mailchimp e-mails them to confirm) or transactional (no "
        "marketing); an existing member's status is never changed"
    )
    removal: Literal["archive", "unsubscribe"] = Field(
        "archive",
        description="what mirror does to a member this sync added whose row left the model: archive "
        "it, or unsubscribe it (kept in the audience, sent no marketing)",
    )
    base_url: str | None = Field(
        None, pattern=URL_PATTERN, description="default https://<dc>.api.mailchimp.com, <dc> from the key"
    )
    # Mailchimp has no per-minute quota, only concurrent connections: each batch delivered in
    # parallel holds one connection at a time, so more than 10 would be refused with 429s
    concurrency: int = Field(
        4,
        ge=1,
        le=MAX_CONNECTIONS,
        description="batches delivered in parallel (Mailchimp allows 10 connections per key)",
    )

    _check_key = field_validator("api_key")(lambda v: secret_ref(v))
    _check_url = field_validator("base_url")(lambda v: None if v is None else https(v))


def data_centre_url(api_key: str) -> str:
    """Return the API address an API key belongs to: ``…-us6`` → ``https://us6.api.mailchimp.com``."""
    found = _KEY.match(api_key.strip())
    if found is None:
        raise ValueError("not a Mailchimp API key")
    return f"https://{found.group(1)}.api.mailchimp.com"


def _check_secret(field: str, value: str) -> None:
    from syncback.errors import SecretError

    if field == "api_key":
        try:
            data_centre_url(value)
        except ValueError:
            raise SecretError(
                "this is not a Mailchimp API key: a key ends in its data centre, like 0123abcd…-us6 "
                "(Profile > Extras > API keys); give the whole key"
            ) from None


def _build(sync: SyncSpec, secrets: SecretResolver, session: requests.Session) -> Destination:
    from syncback.destinations.mailchimp.client import MailchimpDestination
    from syncback.errors import SecretError

    config = sync.destination
    assert isinstance(config, MailchimpDestinationConfig)
    where = f"syncs/{sync.name}.yaml: destination.api_key"
    key = secrets.resolve(config.api_key, where)
    try:
        _check_secret("api_key", key)
    except SecretError as exc:
        raise SecretError(f"{where}: {exc}") from None
    url = config.base_url or data_centre_url(key)
    return MailchimpDestination(config, key, url, session)


def _check_sync(sync: SyncSpec) -> list[tuple[str, str]]:
    assert isinstance(sync.destination, MailchimpDestinationConfig)
    problems = []
    for name in sorted(sync.mapping):
        if name in ("status", "status_if_new"):
            problems.append(
                (
                    f"mapping.{name}",
                    "a sync never writes a member's status: consent is the person's, in Mailchimp; "
                    "set destination.status_for_new for members the sync adds, and remove this field",
                )
            )
        elif name not in MEMBER_FIELDS and not MERGE_TAG.match(name) and not TAG.match(name):
            problems.append(
                (
                    f"mapping.{name}",
                    f"a Mailchimp member has no field {name!r}; map {', '.join(MEMBER_FIELDS)}, a merge "
                    "field as merge_fields.<TAG> (its tag in capitals, at most 10), or a tag as "
                    "tags.<name> (true adds it, false removes it)",
                )
            )
    if IDENTIFIER not in sync.mapping:
        problems.append(
            (
                "mapping",
                "the mapping has no field 'email_address' (Mailchimp finds members by it); map a column to it",
            )
        )
    return problems


def _account(config: MailchimpDestinationConfig) -> str:
    # the connection limit is per API key: its reference (env:NAME), never its value
    return f"{config.api_key} {config.base_url or ''}".strip()


KIND = register(
    Kind(
        name="mailchimp",
        config=MailchimpDestinationConfig,
        modes=("upsert", "mirror"),
        modes_note="Mailchimp's batch subscribe adds new members and updates existing ones in one call",
        removal="archive",
        build=_build,
        secrets=("api_key",),
        identifiers=lambda config, sync: [IDENTIFIER] if IDENTIFIER in sync.mapping else [],
        place=lambda config: [config.list_id, config.base_url or ""],
        account=_account,
        check_secret=_check_secret,
        check_sync=_check_sync,
        # a member's address cannot be emptied: the member moves to its new address itself
        releases=False,
    )
)
