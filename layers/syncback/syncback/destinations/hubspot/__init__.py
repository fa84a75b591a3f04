"""HubSpot CRM objects (contacts, companies, deals, custom objects): the spec's ``type: hubspot``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from syncback.destinations.registry import Kind, account_label, register
from syncback.spec_parts import URL_PATTERN, DestinationBase, RateLimit, SecretRef, https, secret_ref

if TYPE_CHECKING:
    import requests

    from syncback.destinations.base import Destination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec


class HubSpotDestinationConfig(DestinationBase):
    """HubSpot CRM objects (contacts, companies, deals, custom objects)."""

    type: Literal["hubspot"]
    object: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", description="contacts, companies, deals, p_custom_object, ..."
    )
    id_property: str = Field(description="a unique property that identifies records (contacts: email)")
    token: SecretRef
    base_url: str = Field("https://api.hubapi.com", pattern=URL_PATTERN)
    api_version: str = Field(
        "2026-03",
        pattern=r"^(v3|\d{4}-(03|09))$",
        description="the CRM API version: a date version (2026-03, 2026-09, ...) in the path "
        "/crm/objects/{version}/, or v3 for the /crm/v3/ paths (supported until September 2027)",
    )
    rate_limit: RateLimit = RateLimit(requests=100, per_seconds=10.0)

    _check_token = field_validator("token")(lambda v: secret_ref(v))
    _check_url = field_validator("base_url")(lambda v: https(v))


def _build(sync: SyncSpec, secrets: SecretResolver, session: requests.Session) -> Destination:
    from syncback.destinations.hubspot.client import HubSpotDestination

    config = sync.destination
    assert isinstance(config, HubSpotDestinationConfig)
    token = secrets.resolve(config.token, f"syncs/{sync.name}.yaml: destination.token")
    return HubSpotDestination(config, token, sync.mode, session)


def _identifiers(config: HubSpotDestinationConfig, sync: SyncSpec) -> list[str]:
    return [config.id_property] if config.id_property in sync.mapping else []


def _check_sync(sync: SyncSpec) -> list[tuple[str, str]]:
    assert isinstance(sync.destination, HubSpotDestinationConfig)
    id_property = sync.destination.id_property
    if sync.mode != "insert" and id_property not in sync.mapping:
        return [
            (
                "mapping",
                f"destination.id_property is {id_property!r} but the mapping has no field {id_property!r}; "
                f"map the column that identifies records to it: {id_property}: <column>",
            )
        ]
    return []


KIND = register(
    Kind(
        name="hubspot",
        config=HubSpotDestinationConfig,
        modes=("upsert", "update", "insert", "mirror"),
        removal="archive",
        build=_build,
        secrets=("token",),
        identifiers=_identifiers,
        place=lambda config: [config.object, config.id_property, config.base_url],
        # the app's token at one API
        account=lambda config: account_label(config.base_url, config.token),
        check_sync=_check_sync,
    )
)
