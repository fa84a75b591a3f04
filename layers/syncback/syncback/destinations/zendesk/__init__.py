"""Zendesk Support users or organizations, written in background jobs: the spec's ``type: zendesk``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from syncback.destinations.registry import Kind, account_label, register
from syncback.spec_parts import URL_PATTERN, DestinationBase, RateLimit, SecretRef, https, secret_ref

if TYPE_CHECKING:
    import requests

    from syncback.destinations.base import JobDestination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec

#: the user fields a sync may write besides custom ones (``user_fields.<key>``); never ``role``,
#: which would make customers agents
USER_FIELDS = (
    "name",
    "email",
    "external_id",
    "phone",
    "alias",
    "details",
    "notes",
    "locale",
    "time_zone",
    "organization_id",
    "tags",
)
#: the organization fields a sync may write besides custom ones (``organization_fields.<key>``)
ORGANIZATION_FIELDS = (
    "name",
    "external_id",
    "details",
    "notes",
    "domain_names",
    "group_id",
    "shared_tickets",
    "shared_comments",
    "tags",
)
FIELDS = {"users": USER_FIELDS, "organizations": ORGANIZATION_FIELDS}


class ZendeskDestinationConfig(DestinationBase):
    """Zendesk Support users or organizations, created or updated in bulk jobs of at most 100."""

    type: Literal["zendesk"]
    subdomain: str = Field(description="the account: yourcompany in yourcompany.zendesk.com")
    object: Literal["users", "organizations"] = Field("users", description="what a record is")
    identify_by: Literal["external_id", "email"] = Field(
        "external_id", description="the field that finds a record (map it); organizations: external_id"
    )
    email: str | None = Field(None, description="the agent the API token belongs to (with api_token)")
    api_token: SecretRef | None = Field(None, description="an API token, as env:NAME or secret:NAME")
    oauth_token: SecretRef | None = Field(
        None, description="or an OAuth access token, as env:NAME or secret:NAME"
    )
    base_url: str | None = Field(
        None, pattern=URL_PATTERN, description="default https://{subdomain}.zendesk.com"
    )
    rate_limit: RateLimit = RateLimit(requests=400, per_seconds=60.0)
    max_jobs: int = Field(
        30, ge=1, le=30, description="jobs queued or running at once, for this sync (Zendesk allows 30)"
    )
    poll_s: float = Field(2.0, ge=0.01, le=300, description="seconds between two polls of a running job")

    _check_tokens = field_validator("api_token", "oauth_token")(
        lambda v: None if v is None else secret_ref(v)
    )
    _check_url = field_validator("base_url")(lambda v: None if v is None else https(v))

    @model_validator(mode="after")
    def _one_credential(self) -> ZendeskDestinationConfig:
        if self.object == "organizations" and self.identify_by != "external_id":
            raise ValueError(
                "destination.identify_by: organizations are found by external_id only (they have no e-mail)"
            )
        if self.api_token is not None and self.oauth_token is not None:
            raise ValueError("destination: give either email and api_token or oauth_token, not both")
        if self.api_token is None and self.oauth_token is None:
            raise ValueError(
                "destination.api_token: missing; give email and api_token (an API token), or oauth_token"
            )
        if self.api_token is not None and not self.email:
            raise ValueError("destination.email: an API token needs the e-mail of the agent it belongs to")
        return self

    @field_validator("subdomain", mode="before")
    @classmethod
    def _just_the_account(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", value):
            raise ValueError(
                f"{value!r} is not a subdomain: write just the account, acme for acme.zendesk.com "
                "(lower case, digits and -)"
            )
        return value

    @property
    def url(self) -> str:
        return (self.base_url or f"https://{self.subdomain}.zendesk.com").rstrip("/")


def _build(sync: SyncSpec, secrets: SecretResolver, session: requests.Session) -> JobDestination:
    from syncback.destinations.zendesk.client import ZendeskDestination

    config = sync.destination
    assert isinstance(config, ZendeskDestinationConfig)
    if config.api_token is not None:
        token = secrets.resolve(config.api_token, f"syncs/{sync.name}.yaml: destination.api_token")
        authorization = ZendeskDestination.basic(str(config.email), token)
    else:
        assert config.oauth_token is not None
        token = secrets.resolve(config.oauth_token, f"syncs/{sync.name}.yaml: destination.oauth_token")
        authorization = f"Bearer {token}"
    # the account's job limit, shared by the batches this sync delivers at once
    return ZendeskDestination(config, authorization, config.max_jobs, session)


def _check_sync(sync: SyncSpec) -> list[tuple[str, str]]:
    assert isinstance(sync.destination, ZendeskDestinationConfig)
    problems = []
    kind = sync.destination.object.removesuffix("s")  # user, organization
    fields, custom = FIELDS[sync.destination.object], f"{kind}_fields."
    for name in sorted(sync.mapping):
        if name not in fields and not (name.startswith(custom) and len(name) > len(custom)):
            problems.append(
                (
                    f"mapping.{name}",
                    f"a Zendesk {kind} has no field {name!r}; map one of {', '.join(fields)}, "
                    f"or a custom field as {custom}<its key>",
                )
            )
    for needed, why in (
        (sync.destination.identify_by, f"destination.identify_by finds {kind}s by it"),
        ("name", f"Zendesk creates no {kind} without one"),
    ):
        if needed not in sync.mapping:
            problems.append(("mapping", f"the mapping has no field {needed!r} ({why}); map a column to it"))
    return problems


KIND = register(
    Kind(
        name="zendesk",
        config=ZendeskDestinationConfig,
        modes=("upsert", "mirror"),
        modes_note="Zendesk's bulk endpoint creates or updates; it has no bulk create-only or "
        "update-only write by external_id or email",
        removal="archive",
        build=_build,
        secrets=("api_token", "oauth_token"),
        identifiers=lambda config, sync: [config.identify_by] if config.identify_by in sync.mapping else [],
        place=lambda config: [config.object, config.identify_by, config.url],
        # the limit is per account: its address and which credential
        account=lambda config: account_label(config.url, config.api_token or config.oauth_token),
        check_sync=_check_sync,
    )
)
