"""Intercom contacts, one request a record: the spec's ``type: intercom``.

Intercom has no batch or bulk write for contacts, so each record is its own request: a contact the
snapshot knows is updated by its Intercom id (``PUT /contacts/{id}``), any other is created
(``POST /contacts``), and a create that Intercom answers 409 (a contact with that external_id or
e-mail exists) updates the contact it names. The Intercom id is the destination id; a POST that
created the contact says so, which is what lets mirror archive only what this sync created.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from syncback.destinations.registry import Kind, account_label, register
from syncback.errors import SecretError
from syncback.spec_parts import URL_PATTERN, DestinationBase, RateLimit, SecretRef, https, secret_ref

if TYPE_CHECKING:
    import requests

    from syncback.destinations.base import Destination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec

#: the contact fields a sync may write besides ``custom_attributes.<name>``; never ``role`` (the
#: spec's), nor ``owner_id`` or subscription flags, which people in Intercom decide
CONTACT_FIELDS = (
    "external_id",
    "email",
    "phone",
    "name",
    "avatar",
    "signed_up_at",
    "last_seen_at",
)
CUSTOM = "custom_attributes."
#: the REST hosts by data hosting region (developers.intercom.com, "REST APIs": US, Europe, Australia)
REGIONS = {
    "us": "https://api.intercom.io",
    "eu": "https://api.eu.intercom.io",
    "au": "https://api.au.intercom.io",
}
#: private apps: 10,000 calls a minute per app, spread evenly over 10-second windows
PER_10S = 10_000 * 10 // 60
_VERSION = re.compile(r"^(\d+\.\d+|Unstable)$")
_WHERE = "create one under Settings > Integrations > Developer Hub > your app > Authentication"


class IntercomDestinationConfig(DestinationBase):
    """Intercom contacts (users or leads), one request a record, each found by its Intercom id,
    else created, or matched by external_id or e-mail when Intercom says it already has it."""

    type: Literal["intercom"]
    access_token: SecretRef = Field(
        description=f"the app's access token, as env:NAME or secret:NAME ({_WHERE})"
    )
    region: Literal["us", "eu", "au"] = Field(
        "us",
        description="where the workspace is hosted: us (app.intercom.com), eu (app.eu.intercom.com) "
        "or au (app.au.intercom.com)",
    )
    api_version: str = Field(
        "2.11",
        description="the Intercom-Version header every request carries, e.g. 2.11; pinned so that a "
        "change to the app's default version cannot change what a sync writes",
    )
    role: Literal["user", "lead"] = Field("user", description="what a contact the sync creates is")
    identify_by: Literal["external_id", "email"] = Field(
        "external_id",
        description="the mapped field that finds a contact: external_id (your id for the person) or email",
    )
    removal: Literal["archive", "delete"] = Field(
        "archive",
        description="mirror: what becomes of a contact this sync created whose row left the model: "
        "archive it (it can be unarchived) or delete it for good; contacts it only updated are "
        "left alone or cleared, as remove_not_created says",
    )
    base_url: str | None = Field(
        None, pattern=URL_PATTERN, description="default: the region's REST host; a proxy or a test server"
    )
    # one request a record: batches delivered side by side are what make requests concurrent
    concurrency: int = Field(16, ge=1, le=64, description="batches delivered in parallel")
    rate_limit: RateLimit = RateLimit(requests=PER_10S, per_seconds=10.0)

    _check_token = field_validator("access_token")(lambda v: secret_ref(v))
    _check_url = field_validator("base_url")(lambda v: None if v is None else https(v))

    @field_validator("api_version", mode="before")
    @classmethod
    def _a_version(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(
                f'{value!r} is a number: quote the version, api_version: "{value}" (2.10 is not 2.1)'
            )
        if isinstance(value, str) and not _VERSION.match(value):
            raise ValueError(f'{value!r} is not an Intercom API version; write one such as "2.11"')
        return value

    @property
    def url(self) -> str:
        return (self.base_url or REGIONS[self.region]).rstrip("/")


def _build(sync: SyncSpec, secrets: SecretResolver, session: requests.Session) -> Destination:
    from syncback.destinations.intercom.client import IntercomDestination

    config = sync.destination
    assert isinstance(config, IntercomDestinationConfig)
    token = secrets.resolve(config.access_token, f"syncs/{sync.name}.yaml: destination.access_token")
    check_token("access_token", token)
    return IntercomDestination(config, token, session)


def check_token(field: str, value: str) -> None:
    """Raise SecretError if ``value`` cannot be an access token (sent as ``Bearer <token>``)."""
    if field != "access_token":
        return
    if not value.strip():
        raise SecretError(f"the Intercom access token is empty; {_WHERE}")
    if value.lower().startswith("bearer "):
        raise SecretError(
            "the Intercom access token starts with 'Bearer ': store the token alone, syncback adds it"
        )
    if any(c.isspace() for c in value):
        raise SecretError(
            "the Intercom access token holds white space; store the token alone, as Intercom shows it"
        )


def _check_sync(sync: SyncSpec) -> list[tuple[str, str]]:
    config = sync.destination
    assert isinstance(config, IntercomDestinationConfig)
    problems = []
    for name in sorted(sync.mapping):
        if name not in CONTACT_FIELDS and not (name.startswith(CUSTOM) and len(name) > len(CUSTOM)):
            problems.append(
                (
                    f"mapping.{name}",
                    f"an Intercom contact has no field {name!r} a sync may write; map one of "
                    f"{', '.join(CONTACT_FIELDS)}, or a custom attribute as {CUSTOM}<its name> "
                    "(create it first in Settings > Data > People)",
                )
            )
    if config.identify_by not in sync.mapping:
        problems.append(
            (
                "mapping",
                f"the mapping has no field {config.identify_by!r} (destination.identify_by finds "
                f"contacts by it); map a column to it, e.g. {config.identify_by}: <column>",
            )
        )
    return problems


KIND = register(
    Kind(
        name="intercom",
        config=IntercomDestinationConfig,
        modes=("upsert", "mirror"),
        modes_note="a contact is created when Intercom has none with its identifier and updated "
        "when it has; there is no create-only or update-only write by external_id or e-mail",
        removal="archive",
        build=_build,
        secrets=("access_token",),
        identifiers=lambda config, sync: [config.identify_by] if config.identify_by in sync.mapping else [],
        place=lambda config: [config.role, config.identify_by, config.url],
        # Intercom's limit is per app, which its access token names
        account=lambda config: account_label(config.url, config.access_token),
        check_secret=check_token,
        check_sync=_check_sync,
    )
)
