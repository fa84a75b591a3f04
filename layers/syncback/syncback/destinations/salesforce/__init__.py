"""Salesforce objects (standard or custom) through the REST API: the spec's ``type: salesforce``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from syncback.destinations.registry import Kind, account_label, register
from syncback.spec_parts import URL_PATTERN, DestinationBase, SecretRef, https, secret_ref

if TYPE_CHECKING:
    import requests

    from syncback.destinations.base import Destination, JobDestination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec

API_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"


class SalesforceDestinationConfig(DestinationBase):
    """Salesforce records upserted by an external ID field: 200 a request (sObject Collections), or
    Bulk API 2.0 ingest jobs for batches above ``bulk_above``."""

    type: Literal["salesforce"]
    object: str = Field(pattern=API_NAME, description="Contact, Account, Lead, My_Object__c, ...")
    external_id_field: str = Field(
        pattern=API_NAME, description="an External ID field of the object, which the mapping fills"
    )
    login_url: str = Field(
        pattern=URL_PATTERN,
        description="where tokens are asked for: your My Domain (https://acme.my.salesforce.com); "
        "https://login.salesforce.com or https://test.salesforce.com for jwt_bearer",
    )
    auth: Literal["client_credentials", "jwt_bearer"]
    client_id: str = Field(min_length=1, description="the connected app's consumer key")
    client_secret: SecretRef | None = Field(None, description="client_credentials: the consumer secret")
    username: str | None = Field(None, description="jwt_bearer: the user the app acts as")
    private_key: SecretRef | None = Field(
        None, description="jwt_bearer: the PEM private key of the app's certificate"
    )
    api_version: str = Field("62.0", pattern=r"^\d{2,3}\.0$")
    bulk_above: int = Field(
        2000,
        ge=200,
        description="a sync whose batch_size is above this writes through Bulk API 2.0 ingest jobs "
        "(one job per batch), else through sObject Collections, 200 records a request",
    )
    poll_s: float = Field(5.0, ge=0.01, le=300, description="Bulk: seconds between polls of a running job")

    _check_secrets = field_validator("client_secret", "private_key")(
        lambda v: None if v is None else secret_ref(v)
    )
    _check_url = field_validator("login_url")(lambda v: https(v))

    @model_validator(mode="after")
    def _credentials_for_the_flow(self) -> SalesforceDestinationConfig:
        if self.auth == "client_credentials" and self.client_secret is None:
            raise ValueError("destination.client_secret: auth client_credentials needs the consumer secret")
        if self.auth == "jwt_bearer" and self.username is None:
            raise ValueError("destination.username: auth jwt_bearer needs the user the app acts as")
        if self.auth == "jwt_bearer" and self.private_key is None:
            raise ValueError(
                "destination.private_key: auth jwt_bearer needs the key of the app's certificate"
            )
        return self

    @field_validator("api_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # api_version: 62.0 unquoted is a YAML float: take it as the version it means
        return f"{value:.1f}" if isinstance(value, float | int) and not isinstance(value, bool) else value


def _build(
    sync: SyncSpec, secrets: SecretResolver, session: requests.Session
) -> Destination | JobDestination:
    from syncback.destinations.salesforce.client import Credentials, SalesforceDestination

    config = sync.destination
    assert isinstance(config, SalesforceDestinationConfig)
    where = f"syncs/{sync.name}.yaml: destination"
    secret = config.client_secret if config.auth == "client_credentials" else config.private_key
    assert secret is not None
    field = "client_secret" if config.auth == "client_credentials" else "private_key"
    credentials = Credentials(config, secrets.resolve(secret, f"{where}.{field}"))
    if sync.batch_size > config.bulk_above:
        from syncback.destinations.salesforce.bulk import SalesforceBulk

        return SalesforceBulk(config, credentials, session, max_batch_size=sync.batch_size)
    return SalesforceDestination(config, credentials, session)


def _check_secret(field: str, value: str) -> None:
    from syncback.destinations.salesforce.client import load_private_key

    if field == "private_key":
        load_private_key(value)


def _check_sync(sync: SyncSpec) -> list[tuple[str, str]]:
    assert isinstance(sync.destination, SalesforceDestinationConfig)
    field = sync.destination.external_id_field
    if field not in sync.mapping:
        return [
            (
                "mapping",
                f"destination.external_id_field is {field!r} but the mapping has no field {field!r}; "
                f"map the column that identifies records to it: {field}: <column>",
            )
        ]
    return []


KIND = register(
    Kind(
        name="salesforce",
        config=SalesforceDestinationConfig,
        modes=("upsert", "mirror"),
        modes_note="Salesforce upserts by an external ID; creating or updating only would need a "
        "query per record",
        removal="archive",
        build=_build,
        secrets=("client_secret", "private_key"),
        identifiers=lambda config, sync: (
            [config.external_id_field] if config.external_id_field in sync.mapping else []
        ),
        place=lambda config: [config.object, config.external_id_field, config.login_url],
        # an org's limits are per org: its login address and the app
        account=lambda config: account_label(config.login_url, config.client_id),
        check_secret=_check_secret,
        check_sync=_check_sync,
    )
)
