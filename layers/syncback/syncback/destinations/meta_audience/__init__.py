"""Meta Custom Audiences (customer list): members added and removed by hashes of who they are, the
spec's ``type: meta_audience``.

A member is a row of hashed keys in Meta's multi-key schema (``EMAIL``, ``PHONE``, ``EXTERN_ID``,
``FN`` …): the mapping's field names are those keys, and the warehouse normalises and hashes each
(``Kind.hashed``), so only hashes leave it. Meta keeps no member id and answers in aggregate; the
member is named by its identity, the hash of its first mapped key of ``EMAIL``, ``PHONE`` and
``EXTERN_ID``, which is the destination id the snapshot keeps.

Mirror removes a member whose row left the model (``DELETE .../users``), whoever else uploaded that
person: Meta cannot say who added a member (its answers are counts), so the removal is ``delete``,
the registry's one exception to "mirror archives only what this sync created". Give each sync an
audience of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from syncback.destinations.registry import Kind, register
from syncback.errors import SecretError
from syncback.spec_parts import URL_PATTERN, DestinationBase, RateLimit, SecretRef, https, secret_ref

if TYPE_CHECKING:
    import requests

    from syncback.destinations.base import Destination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec

#: Meta: "only a maximum of 10000 at a time"
MAX_ROWS = 10_000
#: the keys a member may carry, each with the normaliser the warehouse applies before hashing
#: (Meta's "Hashing and Normalizing Data": lower case, trimmed; e-mail without white space; phone
#: as digits with the country code; names without punctuation; a city without punctuation or
#: white space). MADID is left out: Meta takes it unhashed, and syncback keeps
#: no audience identifier in plain outside the warehouse
KEYS: dict[str, str] = {
    "EMAIL": "email",
    "PHONE": "phone",
    "EXTERN_ID": "text",
    "FN": "name",
    "LN": "name",
    "FI": "text",
    "CT": "city",
    "ST": "text",
    "ZIP": "text",
    "COUNTRY": "text",
    "GEN": "text",
    "DOBY": "text",
    "DOBM": "text",
    "DOBD": "text",
}
#: a number, not hashed: the value of each customer, for a value-based audience
VALUE = "LOOKALIKE_VALUE"
#: the keys that name a member, the first mapped of them its identity
IDENTITY_KEYS = ("EMAIL", "PHONE", "EXTERN_ID")
#: Marketing API rate limits, custom_audience use case, per ad account an hour: at least 5,000
#: (development tier) or 190,000 (standard tier), + 40 per active custom audience
DEV_TIER_PER_HOUR = 5_000


class MetaAudienceDestinationConfig(DestinationBase):
    """Members of one Meta customer-list Custom Audience, added and removed by their hashes, at
    most 10,000 a request."""

    type: Literal["meta_audience"]
    audience_id: str = Field(
        pattern=r"^[0-9]{5,25}$", description="the Custom Audience id (Ads Manager > Audiences), digits only"
    )
    access_token: SecretRef = Field(
        description="a system user access token with ads_management on the audience's ad account, "
        "as env:NAME or secret:NAME"
    )
    api_version: str = Field(
        "v25.0", pattern=r"^v[0-9]{1,3}\.0$", description="the Graph API version, pinned (e.g. v25.0)"
    )
    ad_account_id: str | None = Field(
        None,
        pattern=r"^act_[0-9]+$",
        description="act_<id> of the audience's ad account: Meta's limit is per ad account, so syncs to "
        "audiences of one account share a budget (default: the audience's own)",
    )
    batch_size: int = Field(MAX_ROWS, ge=1, le=MAX_ROWS, description="members a request: at most 10,000")
    base_url: str | None = Field(
        None, pattern=URL_PATTERN, description="default https://graph.facebook.com; a proxy or a test server"
    )
    rate_limit: RateLimit = RateLimit(requests=DEV_TIER_PER_HOUR, per_seconds=3600.0)

    _check_token = field_validator("access_token")(lambda v: secret_ref(v))
    _check_url = field_validator("base_url")(lambda v: None if v is None else https(v))

    @property
    def url(self) -> str:
        """Return the users edge of the audience: ``…/{version}/{audience_id}/users``."""
        root = (self.base_url or "https://graph.facebook.com").rstrip("/")
        return f"{root}/{self.api_version}/{self.audience_id}/users"


def identity_key(sync: SyncSpec) -> str | None:
    """Return the mapped key that names a member (its hash is the member's id), or None."""
    return next((key for key in IDENTITY_KEYS if key in sync.mapping), None)


def check_token(field: str, value: str) -> None:
    """Raise SecretError if ``value`` cannot be an access token (sent as ``Bearer <token>``)."""
    if field != "access_token":
        return
    if not value.strip():
        raise SecretError("the Meta access token is empty; generate a system user token in Business Settings")
    if value.lower().startswith(("bearer ", "oauth ")):
        raise SecretError(
            "the Meta access token starts with 'Bearer ': store the token alone, syncback adds it"
        )
    if any(c.isspace() for c in value):
        raise SecretError("the Meta access token holds white space; store the token alone, as Meta shows it")


def _build(sync: SyncSpec, secrets: SecretResolver, session: requests.Session) -> Destination:
    from syncback.destinations.meta_audience.client import MetaAudienceDestination

    config = sync.destination
    assert isinstance(config, MetaAudienceDestinationConfig)
    where = f"syncs/{sync.name}.yaml: destination.access_token"
    token = secrets.resolve(config.access_token, where)
    try:
        check_token("access_token", token)
    except SecretError as exc:
        raise SecretError(f"{where}: {exc}") from None
    key = identity_key(sync)
    assert key is not None, "validate requires an identity key"
    return MetaAudienceDestination(config, token, sorted(sync.mapping), key, session)


def _check_sync(sync: SyncSpec) -> list[tuple[str, str]]:
    problems = []
    known = ", ".join([*KEYS, VALUE])
    for name in sorted(sync.mapping):
        if name == "MADID":
            problems.append(
                (
                    "mapping.MADID",
                    "Meta takes mobile advertiser ids unhashed, and syncback keeps no audience "
                    "identifier in plain outside the warehouse; match by EMAIL, PHONE or EXTERN_ID",
                )
            )
        elif name not in KEYS and name != VALUE:
            hint = f" (did you mean {name.upper()}?)" if name.upper() in KEYS or name.upper() == VALUE else ""
            problems.append(
                (
                    f"mapping.{name}",
                    f"a Meta audience member has no key {name!r}{hint}; map Meta's keys: {known}",
                )
            )
    if identity_key(sync) is None:
        problems.append(
            (
                "mapping",
                "the mapping has none of EMAIL, PHONE or EXTERN_ID: Meta matches people by them, and "
                "the first mapped names the member; map one (EMAIL: email)",
            )
        )
    return problems


def _account(config: MetaAudienceDestinationConfig) -> str:
    # Meta's custom_audience limit is per ad account: its id where given, else the audience's
    return config.ad_account_id or f"audience {config.audience_id}"


KIND = register(
    Kind(
        name="meta_audience",
        config=MetaAudienceDestinationConfig,
        modes=("upsert", "mirror"),
        modes_note="adding a member Meta already holds changes nothing, so every write is an add; "
        "mirror also removes members whose rows left",
        # Meta answers in counts, never which members a request created: a member whose row left is
        # removed whoever else uploaded that person (see the module's docstring)
        removal="delete",
        build=_build,
        secrets=("access_token",),
        identifiers=lambda config, sync: [key] if (key := identity_key(sync)) else [],
        place=lambda config: [config.audience_id, config.base_url or ""],
        account=_account,
        check_secret=check_token,
        check_sync=_check_sync,
        # a member is its hashes: a member whose identity changes is removed by its old hash in
        # phase 1 (a release) and added by its new row in phase 2, so that no add of either phase
        # meets a removal of the same hash in the other order
        moves_by_release=True,
        hashed=lambda config: KEYS,
    )
)
