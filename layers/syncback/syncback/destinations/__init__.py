"""Destination API clients: one module per API, all behind ``base.Destination``."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter

from syncback.destinations.base import Destination
from syncback.secrets import SecretResolver
from syncback.spec import HubSpotDestinationConfig, SyncSpec


def build_destination(
    sync: SyncSpec, secrets: SecretResolver, session: requests.Session | None = None
) -> Destination:
    """Return the client for ``sync``'s destination, its secrets resolved."""
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


def request_budget(sync: SyncSpec) -> tuple[int, float] | None:
    """Return the (requests, per_seconds) budget of ``sync``'s destination, or None if unlimited."""
    limit = sync.destination.rate_limit
    return None if limit is None else (limit.requests, limit.per_seconds)
