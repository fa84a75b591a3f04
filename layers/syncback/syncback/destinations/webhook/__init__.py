"""Any HTTPS endpoint, records POSTed as JSON in signed batches: the spec's ``type: webhook``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from syncback.destinations.registry import Kind, account_label, register
from syncback.spec_parts import URL_PATTERN, DestinationBase, SecretRef, https, secret_ref

if TYPE_CHECKING:
    import requests

    from syncback.destinations.base import Destination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec


class WebhookDestinationConfig(DestinationBase):
    """Any HTTPS endpoint: records POSTed as JSON in batches, optionally signed (Standard Webhooks)."""

    type: Literal["webhook"]
    url: str = Field(pattern=URL_PATTERN)
    batch_size: int = Field(100, ge=1, le=10_000)
    secret: SecretRef | None = Field(
        None, description="signing secret (whsec_...), as env:NAME or secret:NAME"
    )

    _check_secret = field_validator("secret")(lambda v: None if v is None else secret_ref(v))
    _check_url = field_validator("url")(lambda v: https(v))


def _build(sync: SyncSpec, secrets: SecretResolver, session: requests.Session) -> Destination:
    from syncback.destinations.webhook.client import WebhookDestination

    config = sync.destination
    assert isinstance(config, WebhookDestinationConfig)
    where = f"syncs/{sync.name}.yaml: destination.secret"
    secret = secrets.resolve(config.secret, where) if config.secret else None
    return WebhookDestination(config, secret, sync.name, session)


def _check_secret(field: str, value: str) -> None:
    from syncback.destinations.webhook.client import signing_key

    if field == "secret":
        signing_key(value)


KIND = register(
    Kind(
        name="webhook",
        config=WebhookDestinationConfig,
        modes=("upsert", "mirror"),
        modes_note="update and insert need a destination that knows which records exist; a "
        "receiver decides what each record means to it",
        removal="archive",
        build=_build,
        secrets=("secret",),
        # two empty places keep the digest syncs had before destinations were registered
        place=lambda config: ["", "", config.url],
        # scheme and host, the rest hashed: a webhook's path or query may hold a token
        account=lambda config: account_label(config.url),
        check_secret=_check_secret,
    )
)
