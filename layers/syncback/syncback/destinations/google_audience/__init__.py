"""Google audiences (Customer Match user lists) through the Data Manager API: the spec's
``type: google_audience``.

Since April 2026 the Google Ads API takes no new Customer Match adopters; Google points new
integrations to the Data Manager API, ``audienceMembers:ingest`` and ``audienceMembers:remove``.
A member is nothing but its identifiers: an e-mail address, a phone number, a postal address
(given and family name, region and postal code). The warehouse normalises them the way Google
documents and hashes them (SHA-256, hex) before they leave it (``hashed``), so batches, receipts,
dead letters and logs never hold one in plain; region and postal code are sent as they are.

The destination id of a member is the identifiers it was sent with (hashed): Data Manager has no
member id and nothing to read back, and a removal must name the same identifiers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from syncback.destinations.registry import Kind, account_label, register
from syncback.errors import SecretError
from syncback.spec_parts import URL_PATTERN, DestinationBase, RateLimit, SecretRef, Strict, https, secret_ref

if TYPE_CHECKING:
    import requests

    from syncback.destinations.base import Destination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec

#: "10,000 AudienceMember resources in the audience_members list" of an IngestAudienceMembersRequest
#: (developers.google.com/data-manager/api/limits; error TOO_MANY_AUDIENCE_MEMBERS)
MAX_MEMBERS = 10_000
#: "10 user identifiers in the UserData for an AudienceMember" (the same page): this destination
#: sends at most 3 (an e-mail, a phone, an address)
MAX_IDENTIFIERS = 10
#: the mapped fields that make a postal address: all four, or none
ADDRESS = ("given_name", "family_name", "region_code", "postal_code")
#: the identifiers hashed in the warehouse, each with its normaliser (``mapping.NORMALISERS``)
HASHED = {"email": "gmail_email", "phone": "e164_phone", "given_name": "text", "family_name": "text"}
#: per-row consent: a boolean column each, overriding the spec's ``consent`` where not null
CONSENT_FIELDS = ("ad_user_data", "ad_personalization")
FIELDS = ("email", "phone", *ADDRESS, *CONSENT_FIELDS)
SCOPE = "https://www.googleapis.com/auth/datamanager"
#: Google Cloud project limits: 300 requests a minute (and 100,000 a day), then 429 RESOURCE_EXHAUSTED
PROJECT_RATE = RateLimit(requests=300, per_seconds=60.0)
_ACCOUNT = re.compile(r"^\d{3}-?\d{3}-?\d{4}$|^\d{1,20}$")
AccountType = Literal["GOOGLE_ADS", "DISPLAY_VIDEO_ADVERTISER", "DISPLAY_VIDEO_PARTNER", "DATA_PARTNER"]


class Consent(Strict):
    """What the people in the audience agreed to (EU user consent policy): sent with every member."""

    ad_user_data: Literal["granted", "denied"] = Field(
        description="consent to send their data to Google for advertising (CONSENT_GRANTED or _DENIED)"
    )
    ad_personalization: Literal["granted", "denied"] = Field(
        description="consent to personalised advertising (CONSENT_GRANTED or _DENIED)"
    )


class GoogleAudienceDestinationConfig(DestinationBase):
    """Members of one Google Ads Customer Match user list, added with the Data Manager API's
    audienceMembers:ingest (at most 10,000 a request) and removed with audienceMembers:remove."""

    type: Literal["google_audience"]
    operating_account_id: str = Field(
        description="the account that owns the user list: a Google Ads customer id (123-456-7890 or "
        "1234567890)"
    )
    operating_account_type: AccountType = Field("GOOGLE_ADS", description="the kind of that account")
    login_account_id: str | None = Field(
        None,
        description="the manager account the token's user reaches the operating account through, if any "
        "(Google Ads' login-customer-id)",
    )
    login_account_type: AccountType = Field("GOOGLE_ADS", description="the kind of the login account")
    user_list_id: str = Field(
        pattern=r"^\d{1,20}$",
        description="the Customer Match user list (Google Ads > Audience manager > Your data segments): "
        "the Data Manager destination's productDestinationId",
    )
    access_token: SecretRef = Field(
        description=f"an OAuth 2.0 access token with the scope {SCOPE} (a user's, or minted for a service "
        "account), as env:NAME or secret:NAME; access tokens expire (an hour): refresh the secret",
    )
    consent: Consent = Field(
        description="the consent sent with every member; map ad_user_data / ad_personalization to "
        "boolean columns to give it per row (a null there falls back to this)"
    )
    customer_match_terms_accepted: bool = Field(
        False,
        description="true once the Google Ads account has accepted the Customer Match terms of service: "
        "every ingest says so (termsOfService), and Google refuses members without it",
    )
    dedicated_audience: bool = Field(
        False,
        description="true: nobody but this sync adds members to this user list. Mirror needs it: Data "
        "Manager cannot say who added a member, so mirror removes every member whose row left the model",
    )
    validate_only: bool = Field(
        False, description="Google checks each request and applies nothing (validateOnly): a dry run"
    )
    batch_size: int = Field(
        MAX_MEMBERS, ge=1, le=MAX_MEMBERS, description="members a request: at most 10,000 (Google's limit)"
    )
    base_url: str | None = Field(
        None, pattern=URL_PATTERN, description="default https://datamanager.googleapis.com; a test server"
    )
    # Google recommends "up to 10 requests concurrently" against the 300 a minute a project has
    concurrency: int = Field(4, ge=1, le=10, description="batches delivered in parallel (Google: up to 10)")
    rate_limit: RateLimit = PROJECT_RATE

    _check_token = field_validator("access_token")(lambda v: secret_ref(v))
    _check_url = field_validator("base_url")(lambda v: None if v is None else https(v))

    @field_validator("operating_account_id", "login_account_id", mode="before")
    @classmethod
    def _an_account_id(cls, value: Any) -> Any:
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            return value
        if not _ACCOUNT.match(value.strip()):
            raise ValueError(
                f"{value!r} is not an account id: give the digits of the Google Ads customer id, e.g. "
                "123-456-7890 (top of the Google Ads screen)"
            )
        return value.strip().replace("-", "")

    @property
    def url(self) -> str:
        return (self.base_url or "https://datamanager.googleapis.com").rstrip("/")


def check_token(field: str, value: str) -> None:
    """Raise SecretError if ``value`` cannot be an OAuth access token (sent as ``Bearer <token>``)."""
    if field != "access_token":
        return
    if not value.strip():
        raise SecretError(f"the Google access token is empty; mint one with the scope {SCOPE}")
    if value.lower().startswith("bearer "):
        raise SecretError(
            "the Google access token starts with 'Bearer ': store the token alone, syncback adds it"
        )
    if any(c.isspace() for c in value):
        raise SecretError("the Google access token holds white space; store the token alone")
    if value.lstrip().startswith("{"):
        raise SecretError(
            "this is a JSON document (a service-account key?), not an access token: mint a token from it "
            f"with the scope {SCOPE} and store the token"
        )


def _build(sync: SyncSpec, secrets: SecretResolver, session: requests.Session) -> Destination:
    from syncback.destinations.google_audience.client import GoogleAudienceDestination

    config = sync.destination
    assert isinstance(config, GoogleAudienceDestinationConfig)
    where = f"syncs/{sync.name}.yaml: destination.access_token"
    token = secrets.resolve(config.access_token, where)
    try:
        check_token("access_token", token)
    except SecretError as exc:
        raise SecretError(f"{where}: {exc}") from None
    return GoogleAudienceDestination(config, token, session)


def _check_sync(sync: SyncSpec) -> list[tuple[str, str]]:
    config = sync.destination
    assert isinstance(config, GoogleAudienceDestinationConfig)
    problems = []
    for name in sorted(sync.mapping):
        if name not in FIELDS:
            problems.append(
                (
                    f"mapping.{name}",
                    f"an audience member has no field {name!r}: map only its identifiers (email, phone, "
                    "given_name, family_name, region_code, postal_code) and, per row, ad_user_data or "
                    "ad_personalization; Google stores nothing else",
                )
            )
    address = [name for name in ADDRESS if name in sync.mapping]
    if address and len(address) < len(ADDRESS):
        missing = ", ".join(name for name in ADDRESS if name not in sync.mapping)
        problems.append(
            (
                "mapping",
                f"an address needs given_name, family_name, region_code and postal_code together; map "
                f"{missing} too, or remove {', '.join(address)}",
            )
        )
    if not any(name in sync.mapping for name in ("email", "phone", "postal_code")):
        problems.append(
            (
                "mapping",
                "the mapping names no member: map email, phone, or an address (given_name, family_name, "
                "region_code, postal_code)",
            )
        )
    for name in ("email", "phone"):
        entry = sync.mapping.get(name)
        if (
            entry is not None
            and entry.column is not None
            and entry.column.lower() == sync.primary_key.lower()
        ):
            problems.append(
                (
                    "primary_key",
                    f"{sync.primary_key} is mapped to {name}, which the warehouse hashes before it leaves, "
                    "but the primary key is stored in plain (batches, receipts, dead letters): key the "
                    "model by another column, such as a customer id",
                )
            )
    if not config.customer_match_terms_accepted:
        problems.append(
            (
                "destination.customer_match_terms_accepted",
                "Google takes Customer Match members only under its Customer Match terms: accept them in "
                "Google Ads (Tools > Audience manager), then set customer_match_terms_accepted: true",
            )
        )
    if sync.mode == "mirror" and not config.dedicated_audience:
        problems.append(
            (
                "destination.dedicated_audience",
                "mirror removes every member whose row left the model, and Data Manager cannot say whether "
                "this sync or someone else added a member; give the sync a user list of its own and set "
                "dedicated_audience: true, or use mode: upsert",
            )
        )
    return problems


def _identifiers(config: GoogleAudienceDestinationConfig, sync: SyncSpec) -> list[str]:
    # the one identifier no two rows may share: the e-mail, else the phone (an address alone: the key)
    return next(([name] for name in ("email", "phone") if name in sync.mapping), [])


KIND = register(
    Kind(
        name="google_audience",
        config=GoogleAudienceDestinationConfig,
        modes=("upsert", "mirror"),
        modes_note="audienceMembers:ingest adds a member, or leaves one already there; it has no "
        "update-only or insert-only write",
        # Data Manager cannot say who added a member: mirror removes whoever added it, which the spec
        # must agree to (dedicated_audience), the registry's one exception to invariant 6
        removal="delete",
        build=_build,
        secrets=("access_token",),
        identifiers=_identifiers,
        place=lambda config: [config.url, config.operating_account_id, config.user_list_id],
        # the limit is per Google Cloud project, which the token names
        account=lambda config: account_label(config.url, config.access_token),
        check_secret=check_token,
        check_sync=_check_sync,
        # a member is its identifiers: one whose identity changes is removed under the old ones in
        # phase 1 (a release) and ingested under the new in phase 2, so that no ingest of either
        # phase meets a removal of the same identifiers in the other order
        moves_by_release=True,
        hashed=lambda config: HASHED,
    )
)
