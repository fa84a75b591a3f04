"""Braze user profiles, their attributes written with ``/users/track``: the spec's ``type: braze``.

A user is found by ``external_id``, and Braze returns no id of its own from ``/users/track``: the
external_id is the destination id. Braze cannot rename a user's external_id this way (an external_id
that changes names another user), so the sync maps it from the model's primary key, which never
changes for a row: a row whose key changes is a row that left and a row that came.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from syncback.destinations.registry import Kind, Removal, account_label, register
from syncback.errors import SecretError
from syncback.spec_parts import URL_PATTERN, DestinationBase, RateLimit, SecretRef, https, secret_ref

if TYPE_CHECKING:
    import requests

    from syncback.destinations.base import Destination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec

#: the most attribute objects a request carries: 75 per request in the current docs (legacy
#: contracts: 75 per array, the same for a request of attributes only); 50 on "Monthly Active Users
#: CY 24-25" contracts, whose requests "may batch up to 50 updates combined"
MAX_ATTRIBUTES = 75
#: a Braze REST endpoint: rest.iad-01.braze.com, rest.fra-01.braze.eu, rest.au-01.braze.com, ...
_REST_HOST = re.compile(r"rest\.[a-z0-9-]+\.braze\.[a-z]+")
#: fields of an attributes object that are not attributes: other identifiers, and request flags
_NOT_ATTRIBUTES = ("user_alias", "braze_id", "push_token_import")
_WHERE = "find yours in the dashboard under Settings > APIs and Identifiers"


class BrazeDestinationConfig(DestinationBase):
    """Braze user profiles: attributes set with /users/track, at most 75 users a request, each
    found by its external_id (created when Braze has none with it)."""

    type: Literal["braze"]
    rest_endpoint: str = Field(
        description=f"your instance's REST endpoint, e.g. rest.iad-01.braze.com or rest.fra-01.braze.eu ({_WHERE})"
    )
    api_key: SecretRef = Field(
        description="a REST API key with the users.track permission (and users.delete for removal: "
        "delete), as env:NAME or secret:NAME"
    )
    removal: Literal["clear", "delete"] = Field(
        "clear",
        description="mirror: what becomes of a user whose row left the model. clear: the user stays, "
        "the attributes this sync maps are removed (set to null); delete: the user is deleted with "
        "/users/delete, for good, whoever created them (Braze cannot say which users a sync created)",
    )
    batch_size: int = Field(
        MAX_ATTRIBUTES,
        ge=1,
        le=MAX_ATTRIBUTES,
        description="users a request: 75 (Braze's limit); 50 on Monthly Active Users CY 24-25 contracts",
    )
    base_url: str | None = Field(
        None, pattern=URL_PATTERN, description="default https://{rest_endpoint}; a proxy or a test server"
    )
    rate_limit: RateLimit = RateLimit(requests=3_000, per_seconds=3.0)

    _check_key = field_validator("api_key")(lambda v: secret_ref(v))
    _check_url = field_validator("base_url")(lambda v: None if v is None else https(v))

    @field_validator("rest_endpoint", mode="before")
    @classmethod
    def _a_rest_host(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        host = value.strip().removeprefix("https://").rstrip("/")
        if "/" in host or "://" in host:
            raise ValueError(
                f"{value!r} is not a REST endpoint: write the host only, e.g. rest.iad-01.braze.com "
                "(no http://, no path such as /users/track)"
            )
        if host.startswith(("dashboard", "sdk.")) or (".braze." in host and not _REST_HOST.fullmatch(host)):
            raise ValueError(
                f"{host!r} is not the REST endpoint (the dashboard's and the SDK's addresses are "
                f"other hosts): give rest.<your instance>.braze.com or .eu; {_WHERE}"
            )
        if not _REST_HOST.fullmatch(host):
            raise ValueError(f"{host!r} is not a Braze REST endpoint such as rest.iad-01.braze.com; {_WHERE}")
        return host

    @property
    def url(self) -> str:
        return (self.base_url or f"https://{self.rest_endpoint}").rstrip("/")


def _build(sync: SyncSpec, secrets: SecretResolver, session: requests.Session) -> Destination:
    from syncback.destinations.braze.client import BrazeDestination

    config = sync.destination
    assert isinstance(config, BrazeDestinationConfig)
    key = secrets.resolve(config.api_key, f"syncs/{sync.name}.yaml: destination.api_key")
    check_key("api_key", key)
    return BrazeDestination(config, key, session)


def check_key(field: str, value: str) -> None:
    """Raise SecretError if ``value`` cannot be a REST API key (sent as ``Bearer <key>``)."""
    if field != "api_key":
        return
    if not value.strip():
        raise SecretError("the Braze REST API key is empty; create one under Settings > APIs and Identifiers")
    if value.lower().startswith("bearer "):
        raise SecretError(
            "the Braze REST API key starts with 'Bearer ': store the key alone, syncback adds it"
        )
    if any(c.isspace() for c in value):
        raise SecretError("the Braze REST API key holds white space; store the key alone, as Braze shows it")


def _check_sync(sync: SyncSpec) -> list[tuple[str, str]]:
    config = sync.destination
    assert isinstance(config, BrazeDestinationConfig)
    problems = []
    source = sync.mapping.get("external_id")
    if source is None:
        problems.append(
            (
                "mapping",
                "the mapping has no field 'external_id' (Braze finds users by it); map the primary key "
                f"to it: external_id: {sync.primary_key}",
            )
        )
    elif source.column != sync.primary_key:
        problems.append(
            (
                "mapping.external_id",
                f"map it from the primary key ({sync.primary_key}): Braze cannot change a user's "
                "external_id here, so one that changed would write another user and leave the old one "
                "behind; make the model's primary key the column that holds the external_id",
            )
        )
    for name in sorted(sync.mapping):
        if name in _NOT_ATTRIBUTES or name.startswith("_"):
            problems.append(
                (
                    f"mapping.{name}",
                    f"{name!r} is not an attribute Braze stores: this destination finds users by "
                    "external_id only and sets no request flags; map another name",
                )
            )
    return problems


def _removal(config: BrazeDestinationConfig) -> Removal:
    return "delete" if config.removal == "delete" else "clear"


KIND = register(
    Kind(
        name="braze",
        config=BrazeDestinationConfig,
        modes=("upsert", "mirror"),
        modes_note="/users/track creates a user whose external_id Braze does not know and updates "
        "one it does; it has no create-only write",
        removal=_removal,
        build=_build,
        secrets=("api_key",),
        identifiers=lambda config, sync: ["external_id"] if "external_id" in sync.mapping else [],
        place=lambda config: [config.url],
        # Braze's limits are per workspace, which its REST API key names
        account=lambda config: account_label(config.url, config.api_key),
        check_secret=check_key,
        check_sync=_check_sync,
    )
)
