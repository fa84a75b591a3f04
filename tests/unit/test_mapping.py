"""The mapping, run as SQL in DuckDB: transforms, constants, null policy, JSON forms, invalid reasons."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal
from typing import Any

import pytest

from syncback.mapping import MappingQuery, describe
from syncback.spec import SyncSpec
from syncback.warehouses.duckdb import DuckDBWarehouse


def mapped(
    mapping: dict[str, Any], column_type: str, values: list[Any], identifiers: tuple[str, ...] = ()
) -> list[tuple[dict[str, Any], str | None, str | None]]:
    """Return (record, invalid reason, identity) of each value of column ``a`` typed ``column_type``."""
    warehouse = DuckDBWarehouse(":memory:")
    try:
        warehouse.execute(f"create table t (id integer, a {column_type})")
        for i, value in enumerate(values):
            warehouse.execute("insert into t values (?, ?)", [i, value])
        sync = SyncSpec.model_validate(
            {
                "name": "s",
                "warehouse": "w",
                "table": "t",
                "primary_key": "id",
                "destination": {"type": "webhook", "url": "https://hooks.example.com/x"},
                "mapping": mapping,
            }
        )
        described = describe(warehouse.columns("select * from t"), warehouse.dialect)
        query = MappingQuery(sync, described, warehouse.dialect, identifiers)
        rows = warehouse.fetch_all(
            f"select sb_key, {query.record()}, sb_invalid, sb_ident "
            f"from ({query.select('select * from t')}) q order by sb_key"
        )
    finally:
        warehouse.close()
    return [(json.loads(record), invalid, ident) for _, record, invalid, ident in rows]


def one(transform: str | list[str] | None, column_type: str, value: Any) -> Any:
    field = {"column": "a"} if transform is None else {"column": "a", "transform": transform}
    record, invalid, _ = mapped({"f": field}, column_type, [value])[0]
    assert invalid is None, invalid
    return record["f"]


@pytest.mark.parametrize(
    ("transform", "column_type", "value", "expected"),
    [
        ("lower", "varchar", " MiXeD ", " mixed "),
        ("upper", "varchar", "ärger", "ÄRGER"),
        ("trim", "varchar", "  x \n\t", "x"),
        ("string", "double", 42.0, "42"),
        ("string", "boolean", True, "true"),
        ("string", "decimal(10,2)", Decimal("10.50"), "10.50"),
        ("integer", "varchar", "17", 17),
        ("integer", "varchar", " -17 ", -17),
        ("integer", "double", 3.0, 3),
        ("integer", "decimal(10,2)", Decimal("12.00"), 12),
        ("integer", "varchar", "1e3", 1000),
        ("integer", "varchar", "12.0", 12),
        ("float", "varchar", "2.5", 2.5),
        ("float", "decimal(10,1)", Decimal("0.1"), 0.1),
        ("boolean", "varchar", "Yes", True),
        ("boolean", "integer", 0, False),
        ("iso_date", "date", dt.date(2026, 3, 1), "2026-03-01"),
        ("iso_date", "timestamp", dt.datetime(2026, 3, 1, 12, 30), "2026-03-01T12:30:00Z"),
        ("iso_date", "timestamp", dt.datetime(2026, 3, 1, 12, 30, 0, 123456), "2026-03-01T12:30:00.123Z"),
        (
            "iso_date",
            "timestamptz",
            dt.datetime(2026, 3, 1, 13, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "2026-03-01T12:30:00Z",
        ),
        ("iso_date", "varchar", "2026-03-01", "2026-03-01"),
        ("iso_date", "varchar", "2026-03-01T13:30:00+01:00", "2026-03-01T12:30:00Z"),
        ("sha256", "varchar", "a@b.co", hashlib.sha256(b"a@b.co").hexdigest()),
    ],
)
def test_transforms(transform: str, column_type: str, value: Any, expected: Any) -> None:
    assert one(transform, column_type, value) == expected


@pytest.mark.parametrize(
    ("transform", "column_type", "value", "reason"),
    [
        ("integer", "varchar", "twelve", "is text that is not an integer"),
        ("integer", "double", 2.5, "is not a whole number"),
        ("integer", "varchar", "12.5", "is text that is not an integer"),
        ("integer", "boolean", True, "is a boolean, not an integer"),
        ("float", "varchar", "abc", "is text that is not a finite number"),
        ("float", "double", float("nan"), "NaN or infinite"),
        ("float", "varchar", "inf", "is text that is not a finite number"),
        ("boolean", "varchar", "maybe", "not a boolean"),
        ("iso_date", "varchar", "yesterday", "not an ISO 8601 date"),
        ("iso_date", "integer", 5, "is an integer, not a date"),
        (None, "double", float("-inf"), "NaN or infinite"),
    ],
)
def test_a_value_that_cannot_be_converted_makes_the_row_invalid(
    transform: str | None, column_type: str, value: Any, reason: str
) -> None:
    field = {"column": "a"} if transform is None else {"column": "a", "transform": transform}
    _, invalid, _ = mapped({"score": field}, column_type, [value])[0]
    assert invalid is not None and invalid.startswith("field score (column a): value ") and reason in invalid
    assert str(value) not in invalid, "the value itself must stay out of the reason"


def test_transforms_chain_in_order() -> None:
    assert one(["trim", "lower", "sha256"], "varchar", "  A@B.CO ") == hashlib.sha256(b"a@b.co").hexdigest()


def test_null_policy_send_or_skip() -> None:
    record, invalid, _ = mapped(
        {"x": {"column": "a"}, "y": {"column": "a", "on_null": "skip", "transform": "integer"}},
        "varchar",
        [None],
    )[0]
    assert (record, invalid) == ({"x": None}, None)


def test_constants_are_sent_as_given() -> None:
    record, _, _ = mapped(
        {"source": {"value": "warehouse"}, "n": {"value": 3}, "b": {"value": True}}, "varchar", [None]
    )[0]
    assert record == {"b": True, "n": 3, "source": "warehouse"}


def test_an_empty_identifier_makes_the_row_invalid_and_the_identity_is_normalised() -> None:
    rows = mapped({"email": {"column": "a"}}, "varchar", ["", "  A@B.co "], identifiers=("email",))
    assert "identifies the record" in (rows[0][1] or "")
    assert rows[1][1:] == (None, "a@b.co")


def test_records_list_fields_in_name_order_whatever_the_spec_order() -> None:
    rows = mapped({"zeta": {"column": "a"}, "alpha": {"value": 1}}, "varchar", ["x"])
    assert list(rows[0][0]) == ["alpha", "zeta"]


@pytest.mark.parametrize(
    ("column_type", "value", "expected"),
    [
        ("bigint", 2**53 - 1, 2**53 - 1),
        ("hugeint", 2**63, str(2**63)),
        ("hugeint", -(2**70), str(-(2**70))),
        ("decimal(10,2)", Decimal("79.19"), 79.19),
        ("decimal(38,3)", Decimal("12345678901234567890.123"), "12345678901234567890.123"),
        ("decimal(10,2)", Decimal("3.00"), 3),
        ("double", 3.0, 3.0),
        ("time", dt.time(12, 0), "12:00:00"),
        ("integer[]", [1, 2], [1, 2]),
        ("varchar", 'ünïcødé ✓ 🚀 "q" \\ \x01', 'ünïcødé ✓ 🚀 "q" \\ \x01'),
    ],
)
def test_values_come_out_json_ready(column_type: str, value: Any, expected: Any) -> None:
    assert one(None, column_type, value) == expected


def test_column_names_match_case_insensitively_and_any_name_is_quoted() -> None:
    warehouse = DuckDBWarehouse(":memory:")
    warehouse.execute('create table t ("ID" integer, "Lead Score" integer, "select" varchar)')
    warehouse.execute("insert into t values (1, 42, 'x')")
    sync = SyncSpec.model_validate(
        {
            "name": "s",
            "warehouse": "w",
            "model": "select * from t -- a comment at the end",
            "primary_key": "id",
            "destination": {"type": "webhook", "url": "https://hooks.example.com/x"},
            "mapping": {"score": "Lead Score", "word": "SELECT"},
        }
    )
    described = describe(warehouse.columns(sync.model_sql), warehouse.dialect)
    query = MappingQuery(sync, described, warehouse.dialect, ())
    rows = warehouse.fetch_all(
        f"select sb_key, {query.record()}, sb_invalid, sb_ident from ({query.select(sync.model_sql)}) q"
    )
    assert [(key, json.loads(record)) for key, record, _, _ in rows] == [("1", {"score": 42, "word": "x"})]
