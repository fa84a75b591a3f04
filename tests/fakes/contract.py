"""What the contract suites need of a destination's fake, and how they find every one.

The shared suites (nasty rows, faults, the convergence property) are written once, in terms of a
few generic fields: ``customer_id`` (the model's key), ``email``, ``firstname`` and any other a
suite maps. Each destination's fake module under ``tests/fakes/`` defines ``FAKE``, a ``Fake``
subclass that starts the fake on loopback and translates: the spec's destination block, the
destination's field for each generic one, how it stores a value, what it holds, and its faults.
``fakes()`` finds them all; a suite parametrised by it runs against every registered destination,
and ``test_every_registered_destination_has_a_fake`` fails when a destination comes without one.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from types import TracebackType
from typing import Any, ClassVar

import requests


class Fake:
    """One destination's fake, as the contract suites drive it."""

    #: the registered destination type it fakes
    name: ClassVar[str]
    #: which of the destination's objects, where the suites run against more than one
    variant: ClassVar[str | None] = None
    #: the generic field by which the destination finds a record, compared trimmed and in lower
    #: case (its values must not be shared by two rows), or None when the model's key is enough
    identifier: ClassVar[str | None] = None
    #: the environment the destination block's secret references read
    env: ClassVar[dict[str, str]] = {}
    #: whether a person can create records beside the sync's (mirror must never remove those)
    by_hand: ClassVar[bool] = False
    #: whether a person can delete a record the sync wrote (``delete_by_hand``)
    deletes_by_hand: ClassVar[bool] = True
    #: the generic fields the destination keeps and shows back (None: every field a suite maps); an
    #: audience keeps only its members' identifiers: the view maps no other, ``stored`` says None
    holds: ClassVar[frozenset[str] | None] = None
    #: how many rows the fault suite sends through it: fewer where a record is a request of its own
    #: and an injected 429 holds every deliverer until the next whole second
    fault_rows: ClassVar[int] = 1_200

    def __enter__(self) -> Fake:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def destination(self) -> dict[str, Any]:
        """Return the spec's destination block, pointed at this fake, with fast test limits."""
        raise NotImplementedError

    def mapping(self, generic: dict[str, Any], key_column: str) -> dict[str, Any]:
        """Return the sync's mapping for the generic one: its fields renamed to the destination's,
        and whatever else the destination requires (``key_column`` is the model's key column)."""
        return dict(generic)

    def records(self) -> list[dict[str, Any]]:
        """Return the live records: ``id`` (the destination's) and the generic fields, as stored."""
        raise NotImplementedError

    def stored(self, field: str, value: Any) -> Any:
        """Return ``value`` of generic ``field`` as the destination stores and shows it."""
        return value

    def identity(self, value: Any) -> str:
        """Return the generic identifier ``value`` as the destination compares it (an audience
        compares hashes), so the suites tell which rows collide; "" when it is empty."""
        return str(value or "").strip().lower()

    def reject(self, values: set[str]) -> None:
        """Refuse, record by record, the records holding any of ``values`` in a mapped field
        (compared in lower case); an empty set accepts everything again."""
        raise NotImplementedError

    def inject(self, rate_429: float, rate_5xx: float, rate_timeout: float, seed: int) -> None:
        """Answer those fractions of write requests 429, 5xx, or late (after doing the write)."""
        raise NotImplementedError

    def created(self) -> int:
        """Return how many records the destination created, ever (a duplicate shows here)."""
        raise NotImplementedError

    def injected(self) -> int:
        """Return how many of the faults ``inject`` asked for have struck so far."""
        raise NotImplementedError

    def create_by_hand(self, email: str) -> str:
        """Create a record as a person would, holding ``email``; return its id."""
        raise NotImplementedError(f"{self.name} has no records made by hand")

    def delete_by_hand(self, record_id: str) -> None:
        """Delete a record as a person would, in the destination's own way (None: it has no records
        a person can delete; the suites then leave this fault out)."""
        raise NotImplementedError(f"{self.name} has no records to delete by hand")

    def writes(self, request: requests.PreparedRequest) -> bool:
        """Whether ``request`` writes records (where a lost answer leaves work syncback never learns of)."""
        raise NotImplementedError

    def lost(
        self, request: requests.PreparedRequest, response: requests.Response, before: set[str]
    ) -> set[str]:
        """Return the ids of the records ``request`` created (``before``: the ids before it), once
        its answer is lost: the destination did the work, syncback never heard of it."""
        return {r["id"] for r in self.records()} - before


class RandomFaults:
    """The faults ``Fake.inject`` asks for: each request draws once, a 429, a 5xx, an answer too
    late (after the work was done), or none; ``struck`` counts those that struck."""

    def __init__(self, rate_429: float, rate_5xx: float, rate_late: float, seed: int) -> None:
        self.rates = (("429", rate_429), ("5xx", rate_5xx), ("late", rate_late))
        self.struck = 0
        self._rng = random.Random(seed)

    def draw(self) -> str | None:
        """Return the fault that strikes this request, if any (callers hold their lock)."""
        x = self._rng.random()
        for name, rate in self.rates:
            if x < rate:
                self.struck += 1
                return name
            x -= rate
        return None


def fakes() -> dict[str, type[Fake]]:
    """Return every destination fake under ``tests/fakes/``, by destination type (and variant: a
    module's ``FAKES``, where the suites run against more than one of its objects)."""
    import tests.fakes as package

    found: dict[str, type[Fake]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"tests.fakes.{info.name}")
        for fake in getattr(module, "FAKES", [getattr(module, "FAKE", None)]):
            if fake is not None:
                found[fake.name if fake.variant is None else f"{fake.name}-{fake.variant}"] = fake
    return dict(sorted(found.items()))


class Knobs(Fake):
    """``reject``, ``inject``, ``injected`` and ``created`` for a fake that keeps ``reject_values``,
    ``random_faults`` and ``counts["created"]`` (the Zendesk and Salesforce fakes)."""

    reject_values: set[str]
    random_faults: RandomFaults | None
    counts: dict[str, int]

    def reject(self, values: set[str]) -> None:
        self.reject_values = {v.strip().lower() for v in values}

    def inject(self, rate_429: float, rate_5xx: float, rate_timeout: float, seed: int) -> None:
        self.random_faults = RandomFaults(rate_429, rate_5xx, rate_timeout, seed)

    def injected(self) -> int:
        return self.random_faults.struck if self.random_faults else 0

    def created(self) -> int:
        return self.counts["created"]
