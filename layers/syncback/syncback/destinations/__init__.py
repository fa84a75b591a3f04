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


def request_budget(sync: SyncSpec) -> tuple[str, int, float] | None:
    """Return (account, requests, per_seconds) of ``sync``'s destination budget, or None if unlimited.

    The account names what the vendor's limit applies to (HubSpot: the app's token at one API), so
    every sync writing to one account shares one budget.
    """
    config = sync.destination
    if config.rate_limit is None:
        return None
    if isinstance(config, HubSpotDestinationConfig):
        account = f"hubspot {config.base_url} {config.token}"
    else:
        account = f"webhook {config.url}"
    return account, config.rate_limit.requests, config.rate_limit.per_seconds
