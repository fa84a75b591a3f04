"""The destination registry: each destination declares, in one place, all the engine needs of it.

A destination is a package under ``destinations/`` whose ``__init__`` defines its config model
(a pydantic model with a ``type: Literal[...]`` field) and registers a ``Kind``; its client lives
beside it and is imported only when a client is built. The spec's discriminated union and its JSON
Schemas, ``validate``, the planner's identity check, the rate budget and the CLI read this
registry; nothing outside a destination's package names that destination. ``catalog`` lists the
packages to load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from syncback.errors import ConfigError, Problem

if TYPE_CHECKING:  # the spec imports this module: types only
    import requests

    from syncback.destinations.base import Destination, JobDestination
    from syncback.secrets import SecretResolver
    from syncback.spec import SyncSpec

#: what mirror does to a record this sync created whose row left the model. archive: take it out
#: of where the sync put it (the client says how: delete or archive a record, remove a member from
#: a list or an audience); clear: the records stay, and the fields the sync maps (all but the
#: identifier) are emptied; delete: every record whose row left is deleted, whoever created it (for
#: a destination that cannot say which records a write created: Braze where the spec asks for it,
#: an audience whose answers are counts; the one exception to "mirror archives only what this sync
#: created"); unsupported: nothing can be removed there, and mirror is refused
Removal = Literal["archive", "clear", "delete", "unsupported"]
Mode = Literal["upsert", "update", "insert", "mirror"]


@dataclass(frozen=True)
class Kind:
    """One destination, as the engine knows it."""

    #: the spec's ``destination.type``
    name: str
    #: its config model; the spec's union is made of these
    config: type[Any]
    #: the sync modes it supports
    modes: tuple[Mode, ...]
    #: what mirror does to a record whose row left the model, or a function of the config that says
    #: it (where the spec chooses); read it with ``removal_of``
    removal: Removal | Callable[[Any], Removal]
    #: builds the client, its secrets resolved (imports the client module: not on a cold path)
    build: Callable[[SyncSpec, SecretResolver, requests.Session], Destination | JobDestination]
    #: why it takes only those modes, for the message refusing another
    modes_note: str = ""
    #: config fields that hold secret references (env:, secret:), for validate
    secrets: tuple[str, ...] = ()
    #: the mapped fields by which it finds a record (one per value, compared trimmed, lower case)
    identifiers: Callable[[Any, SyncSpec], list[str]] = lambda config, sync: []
    #: what names where records go (a digest of it is the snapshot's target): another object or
    #: URL starts a sync afresh
    place: Callable[[Any], Sequence[str]] = lambda config: []
    #: the account its rate limit applies to (budgets are shared per account); never a secret
    account: Callable[[Any], str] = lambda config: ""
    #: checks a resolved secret (field, value); raises SecretError with the fix
    check_secret: Callable[[str, str], None] | None = None
    #: whether a record can give its identifier up (emptied) so that another row takes it in the
    #: same run; False where the identifier is the record (an audience member is its address): then
    #: a record moves first and a row taking its identifier waits (see the planner)
    releases: bool = True
    #: whether a record whose identifier changes gives the old one up in phase 1 (a release) and is
    #: written in phase 2, whoever takes its old identifier: where one write cannot both take the old
    #: identifier away and give the new one (an audience member is its hashes: the old is removed,
    #: the new added, and only the phases order those two against other rows' removals and adds)
    moves_by_release: bool = False
    #: checks the spec across fields (mode, mapping); returns problems as (field, message)
    check_sync: Callable[[SyncSpec], list[tuple[str, str]]] = field(default=lambda sync: [])
    #: the mapped fields the warehouse normalises and hashes (SHA-256, lower-case hex) before they
    #: leave it, each with the name of its normaliser in ``mapping.NORMALISERS`` (an audience's
    #: e-mail → "email"): batches, receipts, dead letters, the snapshot and logs hold only the hash
    hashed: Callable[[Any], Mapping[str, str]] = lambda config: {}


REGISTRY: dict[str, Kind] = {}


def account_label(url: str, credential: object = "") -> str:
    """Return what a rate budget is shared under (``Kind.account``): the API's address, safe to log
    (``url_label``), and which credential, by its reference (env:NAME), never its value."""
    from syncback.destinations.http import url_label

    return f"{url_label(url)} {credential}".strip()


def register(kind: Kind) -> Kind:
    """Add ``kind`` to the registry (a destination package does this on import); return it."""
    if kind.name in REGISTRY:
        raise ValueError(f"destination type {kind.name!r} is registered twice")
    REGISTRY[kind.name] = kind
    return kind


def kind_of(sync: SyncSpec) -> Kind:
    """Return the registered destination of ``sync``."""
    kind = REGISTRY.get(sync.destination.type)
    if kind is None:  # the spec's union only admits registered types; this is a programming error
        raise ConfigError(
            [Problem(f"syncs/{sync.name}.yaml", "destination.type", "unknown destination type")]
        )
    return kind


def removal_of(sync: SyncSpec) -> Removal:
    """Return what mirror does to a record of ``sync`` whose row left the model."""
    removal = kind_of(sync).removal
    return removal(sync.destination) if callable(removal) else removal


def build_destination(
    sync: SyncSpec, secrets: SecretResolver, session: requests.Session | None = None
) -> Destination | JobDestination:
    """Return the client for ``sync``'s destination, its secrets resolved."""
    import requests
    from requests.adapters import HTTPAdapter

    if session is None:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=sync.destination.concurrency + 2)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return kind_of(sync).build(sync, secrets, session)


def identifier_fields(sync: SyncSpec) -> list[str]:
    """Return the mapped fields by which the destination finds a record (HubSpot's id property).

    No two model rows may send one value of them (compared as the destination compares them), and
    a record this sync has written is addressed by its destination id, not by them.
    """
    return kind_of(sync).identifiers(sync.destination, sync)


def hashed_fields(sync: SyncSpec) -> dict[str, str]:
    """Return {mapped field: normaliser} of the fields the warehouse hashes before they leave it."""
    return {name: how for name, how in kind_of(sync).hashed(sync.destination).items() if name in sync.mapping}


def destination_target(sync: SyncSpec) -> str:
    """Return a digest of where the sync writes: a sync pointed at another object or URL starts afresh."""
    where = [sync.destination.type, *kind_of(sync).place(sync.destination)]
    return hashlib.sha256("\x00".join(str(w) for w in where).encode()).hexdigest()[:16]


def request_budget(sync: SyncSpec) -> tuple[str, int, float] | None:
    """Return (account, requests, per_seconds) of ``sync``'s destination budget, or None if unlimited.

    The account names what the vendor's limit applies to, so every sync writing to one account
    shares one budget; it never holds a secret or a whole URL.
    """
    limit = getattr(sync.destination, "rate_limit", None)
    if limit is None:
        return None
    account = f"{sync.destination.type} {kind_of(sync).account(sync.destination)}"
    return account, limit.requests, limit.per_seconds


def secret_fields(sync: SyncSpec) -> list[tuple[str, str]]:
    """Return (spec field, reference) of each secret reference the sync's destination holds."""
    out = []
    for name in kind_of(sync).secrets:
        reference = getattr(sync.destination, name, None)
        if isinstance(reference, str):
            out.append((f"destination.{name}", reference))
    return out


def check_secret(sync: SyncSpec, field: str, value: str) -> None:
    """Raise SecretError if a resolved secret cannot work as ``field`` of ``sync``'s destination."""
    check = kind_of(sync).check_secret
    if check is not None:
        check(field.removeprefix("destination."), value)


def sync_problems(sync: SyncSpec) -> list[tuple[str, str]]:
    """Return (field, message) for what the destination cannot do as the sync asks."""
    kind = kind_of(sync)
    problems = []
    if sync.mode == "mirror" and removal_of(sync) == "unsupported":
        problems.append(
            (
                "mode",
                f"mirror removes records whose rows left the model, and a {kind.name} destination "
                "cannot remove records; use upsert",
            )
        )
    elif sync.mode not in kind.modes:
        takes = ", ".join(kind.modes[:-1]) + f" or {kind.modes[-1]}" if len(kind.modes) > 1 else kind.modes[0]
        why = f" ({kind.modes_note})" if kind.modes_note else ""
        problems.append(("mode", f"a {kind.name} destination takes {takes}, not {sync.mode}{why}"))
    return problems + _hashing_problems(sync) + kind.check_sync(sync)


def _hashing_problems(sync: SyncSpec) -> list[tuple[str, str]]:
    """Return problems that would let a hashed identifier leave the warehouse in plain, or hash it twice."""
    problems = []
    for name, normaliser in sorted(hashed_fields(sync).items()):
        entry = sync.mapping[name]
        # a key is stored in plain by every sync: refused only where it is a person's address
        if (
            normaliser in ("email", "phone")
            and entry.column is not None
            and entry.column.lower() == sync.primary_key.lower()
        ):
            problems.append(
                (
                    "primary_key",
                    f"{sync.primary_key} is mapped to {name}, which the warehouse hashes before it "
                    "leaves, but the primary key is stored in plain (batches, receipts, dead letters): "
                    "key the model by another column, such as a customer id",
                )
            )
        if "sha256" in entry.transforms:
            problems.append(
                (
                    f"mapping.{name}",
                    f"a {sync.destination.type} destination normalises and hashes {name} itself; "
                    "remove the sha256 transform (it would be hashed twice)",
                )
            )
    return problems
