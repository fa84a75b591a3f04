"""Destination API clients: one module per API, all behind ``base.Destination``."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from syncback.destinations.base import Destination
from syncback.secrets import SecretResolver
from syncback.spec import HubSpotDestinationConfig, SyncSpec

if TYPE_CHECKING:  # requests is imported when a client is built: not on a handler's cold path
    import requests


def build_destination(
    sync: SyncSpec, secrets: SecretResolver, session: requests.Session | None = None
) -> Destination:
    """Return the client for ``sync``'s destination, its secrets resolved."""
    import requests
    from requests.adapters import HTTPAdapter

    config = sync.destination
    if session is None:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=config.concurrency + 2)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    if isinstance(config, HubSpotDestinationConfig):
        from syncback.destinations.hubspot import HubSpotDestination

        token = secrets.resolve(config.token, f"syncs/{sync.name}.yaml: destination.token")
        return HubSpotDestination(config, token, sync.mode, session)
    from syncback.destinations.webhook import WebhookDestination

    secret = (
        secrets.resolve(config.secret, f"syncs/{sync.name}.yaml: destination.secret")
        if config.secret
        else None
    )
    return WebhookDestination(config, secret, sync.name, session)


def check_secret(sync: SyncSpec, field: str, value: str) -> None:
    """Raise SecretError if a resolved secret cannot work as ``field`` of ``sync``'s destination."""
    if field == "destination.secret" and sync.destination.type == "webhook":
        from syncback.destinations.webhook import signing_key

        signing_key(value)


def identifier_fields(sync: SyncSpec) -> list[str]:
    """Return the mapped fields by which the destination finds a record (HubSpot's id property).

    No two model rows may send one value of them (compared as the destination compares them), and
    a record this sync has written is addressed by its destination id, not by them.
    """
    id_property = getattr(sync.destination, "id_property", None)
    return [id_property] if id_property and id_property in sync.mapping else []


def destination_target(sync: SyncSpec) -> str:
    """Return a digest of where the sync writes: a sync pointed at another object or URL starts afresh."""
    config = sync.destination
    where = [config.type, getattr(config, "object", ""), getattr(config, "id_property", "")]
    where.append(getattr(config, "url", "") or getattr(config, "base_url", ""))
    return hashlib.sha256("\x00".join(str(w) for w in where).encode()).hexdigest()[:16]


def request_budget(sync: SyncSpec) -> tuple[str, int, float] | None:
    """Return (account, requests, per_seconds) of ``sync``'s destination budget, or None if unlimited.

    The account names what the vendor's limit applies to (HubSpot: the app's token at one API), so
    every sync writing to one account shares one budget.
    """
    config = sync.destination
    if config.rate_limit is None:
        return None
    from syncback.destinations.http import url_label

    # the key names the account, never a secret: the token's reference (env:NAME), and a URL's
    # scheme and host with the rest hashed (a webhook's path or query may hold a token)
    if isinstance(config, HubSpotDestinationConfig):
        account = f"hubspot {url_label(config.base_url)} {config.token}"
    else:
        account = f"webhook {url_label(config.url)}"
    return account, config.rate_limit.requests, config.rate_limit.per_seconds
