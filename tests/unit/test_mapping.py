"""The mapping: transforms, constants, null policy, and the reasons a value makes a record invalid."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any

import pytest

from syncback.mapping import InvalidValue, Mapper, json_ready
from syncback.spec import FieldMapping


def mapper(required: tuple[str, ...] = (), **fields: dict[str, Any]) -> Mapper:
    mapping = {name: FieldMapping(**entry) for name, entry in fields.items()}
    return Mapper(mapping, ["a"], required)


@pytest.mark.parametrize(
    ("transform", "value", "expected"),
    [
        ("lower", " MiXeD ", " mixed "),
        ("upper", "straße", "STRASSE"),
        ("trim", "  x \n", "x"),
        ("string", 42.0, "42"),
        ("string", True, "true"),
        ("integer", "17", 17),
        ("integer", 3.0, 3),
        ("integer", Decimal("12.00"), 12),
        ("integer", "1e3", 1000),
        ("float", "2.5", 2.5),
        ("float", Decimal("0.1"), 0.1),
        ("boolean", "Yes", True),
        ("boolean", 0, False),
        ("iso_date", dt.date(2026, 3, 1), "2026-03-01"),
        ("iso_date", dt.datetime(2026, 3, 1, 12, 30), "2026-03-01T12:30:00Z"),
        (
            "iso_date",
            dt.datetime(2026, 3, 1, 13, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "2026-03-01T12:30:00Z",
        ),
        ("iso_date", "2026-03-01", "2026-03-01"),
        ("sha256", "a@b.co", hashlib.sha256(b"a@b.co").hexdigest()),
    ],
)
def test_transforms(transform: str, value: Any, expected: Any) -> None:
    assert mapper(f={"column": "a", "transform": transform}).map([value]) == {"f": expected}


@pytest.mark.parametrize(
    ("transform", "value", "reason"),
    [
        ("integer", "twelve", "not an integer"),
        ("integer", 2.5, "not a whole number"),
        ("integer", True, "boolean"),
        ("float", "abc", "not a number"),
        ("float", float("nan"), "NaN or infinite"),
        ("float", "inf", "NaN or infinite"),
        ("boolean", "maybe", "not a boolean"),
        ("iso_date", "yesterday", "not an ISO 8601 date"),
        ("iso_date", 5, "not a date"),
    ],
)
def test_a_value_that_cannot_be_converted_makes_the_record_invalid(
    transform: str, value: Any, reason: str
) -> None:
    with pytest.raises(InvalidValue) as caught:
        mapper(score={"column": "a", "transform": transform}).map([value])
    message = str(caught.value)
    assert message.startswith("field score (column a): value ") and reason in message
    assert repr(value) not in message, "the value itself must stay out of the reason"


def test_transforms_chain_in_order() -> None:
    m = mapper(e={"column": "a", "transform": ["trim", "lower", "sha256"]})
    assert m.map(["  A@B.CO "]) == {"e": hashlib.sha256(b"a@b.co").hexdigest()}


def test_null_policy_send_or_skip() -> None:
    m = Mapper(
        {"x": FieldMapping(column="a"), "y": FieldMapping(column="a", on_null="skip", transform="integer")},
        ["a"],
    )
    assert m.map([None]) == {"x": None}


def test_constants_are_sent_as_given() -> None:
    assert mapper(source={"value": "warehouse"}, n={"value": 3}).map([None]) == {
        "source": "warehouse",
        "n": 3,
    }


def test_an_empty_identifying_field_makes_the_record_invalid() -> None:
    with pytest.raises(InvalidValue, match="identifies the record"):
        mapper(("email",), email={"column": "a"}).map([""])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**53 - 1, 2**53 - 1),
        (2**63, str(2**63)),
        (-(2**70), str(-(2**70))),
        (Decimal("79.19"), 79.19),
        (Decimal("12345678901234567890.123"), "12345678901234567890.123"),
        (dt.time(12, 0), "12:00:00"),
        ({"k": [1, Decimal("2")]}, {"k": [1, 2]}),
        ("ünïcødé ✓ 🚀", "ünïcødé ✓ 🚀"),
    ],
)
def test_values_come_out_json_ready(value: Any, expected: Any) -> None:
    assert json_ready(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("-inf"), Decimal("NaN"), b"bytes", object()])
def test_values_no_json_reader_takes_are_refused(value: Any) -> None:
    with pytest.raises(InvalidValue):
        json_ready(value)


def test_column_names_match_case_insensitively() -> None:
    # Snowflake returns unquoted identifiers in upper case
    m = Mapper({"email": FieldMapping(column="Email")}, ["EMAIL"])
    assert m.map(["x@y.z"]) == {"email": "x@y.z"}
