"""Audience identifiers hashed in the warehouse: each normaliser then SHA-256, run as SQL in DuckDB."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncback.mapping import MappingQuery, describe
from syncback.spec import SyncSpec
from syncback.warehouses.duckdb import DuckDBWarehouse

WHITESPACE = st.sampled_from([" ", "\t", "\n", "\r", "  "])
LOCAL = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-", min_size=1, max_size=20
)
DOMAIN = st.from_regex(r"[a-zA-Z0-9]{1,10}\.[a-zA-Z]{2,4}", fullmatch=True)


@st.composite
def emails(draw: st.DrawFn) -> str:
    """Return an address in some case, with white space around it and, now and then, inside it."""
    address = f"{draw(LOCAL)}@{draw(DOMAIN)}"
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in address)
    cut = draw(st.integers(0, len(cased)))
    inside = draw(st.one_of(st.just(""), WHITESPACE))
    return f"{draw(WHITESPACE)}{cased[:cut]}{inside}{cased[cut:]}{draw(st.one_of(st.just(''), WHITESPACE))}"


def python_email(value: str) -> str:
    return hashlib.sha256("".join(value.split()).lower().encode()).hexdigest()


def mapped(
    values: list[Any], hashed: dict[str, str], transform: str | None = None, column_type: str = "varchar"
) -> list[tuple[dict[str, Any], str | None, str | None]]:
    """Return (record, invalid reason, identity) of each value of column ``a``, field ``f`` hashed."""
    warehouse = DuckDBWarehouse(":memory:")
    try:
        warehouse.execute(f"create table t (id integer, a {column_type})")
        for i, value in enumerate(values):
            warehouse.execute("insert into t values (?, ?)", [i, value])
        field: dict[str, Any] = (
            {"column": "a"} if transform is None else {"column": "a", "transform": transform}
        )
        sync = SyncSpec.model_validate(
            {
                "name": "s",
                "warehouse": "w",
                "table": "t",
                "primary_key": "id",
                "destination": {"type": "webhook", "url": "https://hooks.example.com/x"},
                "mapping": {"f": field},
            }
        )
        described = describe(warehouse.columns("select * from t"), warehouse.dialect)
        query = MappingQuery(sync, described, warehouse.dialect, ["f"], hashed)
        rows = warehouse.fetch_all(
            f"select sb_key, {query.record()}, sb_invalid, sb_ident "
            f"from ({query.select('select * from t')}) q order by cast(sb_key as integer)"
        )
    finally:
        warehouse.close()
    return [(json.loads(record), invalid, ident) for _, record, invalid, ident in rows]


@settings(max_examples=60, deadline=None)
@given(st.lists(emails(), min_size=1, max_size=8))
def test_an_email_is_normalised_and_hashed_as_python_would(addresses: list[str]) -> None:
    # Given addresses in any case, with white space around and inside them
    # When the warehouse maps them to a field hashed as an e-mail
    rows = mapped(addresses, {"f": "email"})
    # Then each record and identity holds SHA-256 hex of the address without white space, lower case
    for address, (record, invalid, identity) in zip(addresses, rows, strict=True):
        assert invalid is None
        assert record["f"] == python_email(address) == identity
        assert re.fullmatch(r"[0-9a-f]{64}", record["f"])


def test_two_addresses_that_normalise_equal_have_one_identity() -> None:
    # Given one address written three ways
    rows = mapped(["Ann@Example.com", "  ann@example.COM\n", "a nn@example.com"], {"f": "email"})
    # Then the identity the duplicate-identifier check compares is one hash, and no record holds the address
    assert len({identity for _, _, identity in rows}) == 1
    assert all("example" not in json.dumps(record) for record, _, _ in rows)


@pytest.mark.parametrize(
    ("normaliser", "value", "normalised"),
    [
        ("phone", "+44 20 7946 0000", "442079460000"),
        ("phone", "(555) 010-9999", "5550109999"),
        ("phone", "0044 20 7946 0000", "442079460000"),
        ("text", "  Émile \t", "émile"),
        ("text", "CUST-0042 ", "cust-0042"),
        ("email", " A.B+x@Example.ORG", "a.b+x@example.org"),
        ("name", " O'Brien-Smith, Jr. ", "obriensmith jr"),
        ("name", "Zoë", "zoë"),
        ("city", "St. Louis", "stlouis"),
        ("city", " Saint-Étienne ", "saintétienne"),
    ],
)
def test_each_normaliser_then_sha256(normaliser: str, value: str, normalised: str) -> None:
    [(record, invalid, _)] = mapped([value], {"f": normaliser})
    assert invalid is None
    assert record["f"] == hashlib.sha256(normalised.encode()).hexdigest()


def test_a_phone_given_as_a_number_is_hashed_from_its_digits() -> None:
    [(record, _, _)] = mapped([442079460000], {"f": "phone"}, column_type="bigint")
    assert record["f"] == hashlib.sha256(b"442079460000").hexdigest()


def test_the_hash_comes_after_the_fields_transforms() -> None:
    [(record, _, _)] = mapped(["  ANN@EXAMPLE.COM  "], {"f": "text"}, transform="trim")
    assert record["f"] == hashlib.sha256(b"ann@example.com").hexdigest()


@pytest.mark.parametrize(
    ("normaliser", "value"), [("email", " \t "), ("phone", "n/a"), ("phone", "000"), ("text", "")]
)
def test_nothing_left_after_normalising_is_an_empty_identifier_never_the_hash_of_nothing(
    normaliser: str, value: str
) -> None:
    [(record, invalid, identity)] = mapped([value], {"f": normaliser})
    assert record.get("f") is None and identity is None
    assert invalid == "field f identifies the record in the destination and is empty"


def test_a_null_stays_null() -> None:
    [(record, invalid, _)] = mapped([None], {"f": "email"})
    assert record.get("f") is None
    assert invalid is not None and "is empty" in invalid


def test_an_unknown_normaliser_is_refused_naming_those_there_are() -> None:
    with pytest.raises(
        ValueError,
        match=r"no normaliser 'gmail' \(there are: city, e164_phone, email, gmail_email, name, phone, text\)",
    ):
        mapped(["x"], {"f": "gmail"})
