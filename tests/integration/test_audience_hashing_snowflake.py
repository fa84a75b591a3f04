"""Audience identifiers hashed in Snowflake SQL (fakesnow): the same hashes as DuckDB and Python."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import fakesnow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncback.mapping import MappingQuery, describe
from syncback.secrets import SecretResolver
from syncback.spec import SyncSpec
from syncback.warehouses.snowflake import SnowflakeWarehouse
from tests.integration.test_snowflake_warehouse import PASSWORD_ENV, snowflake_config
from tests.unit.test_audience_hashing import emails, python_email

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

SYNC = SyncSpec.model_validate(
    {
        "name": "s",
        "warehouse": "w",
        "table": "analytics.people",
        "primary_key": "id",
        "destination": {"type": "webhook", "url": "https://hooks.example.com/x"},
        "mapping": {"email": "email", "phone": "phone", "city": "city"},
    }
)
HASHED = {"email": "email", "phone": "phone", "city": "city"}


@pytest.fixture(scope="module")
def warehouse() -> Iterator[SnowflakeWarehouse]:
    with fakesnow.patch():
        wh = SnowflakeWarehouse(snowflake_config(), SecretResolver(environ=PASSWORD_ENV), name="snowflake")
        wh.execute("create table analytics.people (id integer, email varchar, phone varchar, city varchar)")
        yield wh
        wh.close()


def mapped(warehouse: SnowflakeWarehouse, rows: list[tuple[int, str, str, str]]) -> list[dict[str, str]]:
    warehouse.execute("delete from analytics.people")
    warehouse.load_rows("analytics.people", ("id", "email", "phone", "city"), rows)
    described = describe(warehouse.columns("select * from analytics.people"), warehouse.dialect)
    query = MappingQuery(SYNC, described, warehouse.dialect, ["email"], HASHED)
    out = warehouse.fetch_all(
        f"select {query.record()}, sb_ident from ({query.select('select * from analytics.people')}) q "
        "order by cast(sb_key as integer)"
    )
    assert all(json.loads(record)["email"] == identity for record, identity in out)
    return [json.loads(record) for record, _ in out]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(emails(), min_size=1, max_size=5))
def test_snowflake_hashes_an_email_as_python_would(
    warehouse: SnowflakeWarehouse, addresses: list[str]
) -> None:
    records = mapped(warehouse, [(i, a, "1", "x") for i, a in enumerate(addresses)])
    assert [r["email"] for r in records] == [python_email(a) for a in addresses]


def test_snowflake_normalises_phones_and_cities_as_duckdb_does(warehouse: SnowflakeWarehouse) -> None:
    [record] = mapped(warehouse, [(1, "A@B.co", "+44 (20) 7946-0000", "  New York, N.Y. ")])
    assert record["phone"] == hashlib.sha256(b"442079460000").hexdigest()
    assert record["city"] == hashlib.sha256(b"newyorkny").hexdigest()
