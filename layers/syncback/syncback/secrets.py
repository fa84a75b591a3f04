"""Resolving ``env:NAME`` and ``secret:NAME`` references from the spec into secret values."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from syncback.errors import SecretError

SecretFetcher = Callable[[str], str]


def secrets_manager_fetcher(name: str) -> str:
    """Return the value of the AWS Secrets Manager secret ``name`` (cached across warm invocations)."""
    # imported here: boto3 and Powertools are heavy and only needed where secret: is used
    from aws_lambda_powertools.utilities import parameters

    try:
        value = parameters.get_secret(name, max_age=300)
    except Exception as exc:
        raise SecretError(
            f"secret:{name}: cannot read it from AWS Secrets Manager ({type(exc).__name__})"
        ) from exc
    return value if isinstance(value, str) else bytes(value).decode()


class SecretResolver:
    """Turns references into values; ``env:`` from the environment, ``secret:`` from a fetcher."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, fetch_secret: SecretFetcher = secrets_manager_fetcher
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._fetch_secret = fetch_secret

    def resolve(self, reference: str, where: str) -> str:
        """Return the secret ``reference`` names; ``where`` says which spec field asked, for the error."""
        kind, _, name = reference.partition(":")
        if kind == "env":
            value = self._environ.get(name)
            if value is None:
                raise SecretError(
                    f"{where}: environment variable {name} is not set; export it or use secret:NAME"
                )
            if not value.strip():
                raise SecretError(
                    f"{where}: environment variable {name} is set but empty; give it the secret"
                )
            return value
        if kind == "secret":
            return self._fetch_secret(name)
        raise SecretError(f"{where}: {kind!r} is not a secret reference; write env:NAME or secret:NAME")
