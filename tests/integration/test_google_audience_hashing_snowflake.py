"""Google's normalisers in Snowflake SQL (fakesnow): ``gmail_email`` and ``e164_phone`` hash as in
DuckDB and as Google's formatting guide says."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import fakesnow
import pytest

from syncback.mapping import MappingQuery, describe
from syncback.secrets import SecretResolver
from syncback.spec import SyncSpec
from syncback.warehouses.snowflake import SnowflakeWarehouse
from tests.integration.test_snowflake_warehouse import PASSWORD_ENV, snowflake_config

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

SYNC = SyncSpec.model_validate(
    {
        "name": "s",
        "warehouse": "w",
        "table": "analytics.people",
        "primary_key": "id",
        "destination": {"type": "webhook", "url": "https://hooks.example.com/x"},
        "mapping": {"email": "email", "phone": "phone"},
    }
)


@pytest.fixture(scope="module")
def warehouse() -> Iterator[SnowflakeWarehouse]:
    with fakesnow.patch():
        wh = SnowflakeWarehouse(snowflake_config(), SecretResolver(environ=PASSWORD_ENV), name="snowflake")
        wh.execute("create table analytics.people (id integer, email varchar, phone varchar)")
        yield wh
        wh.close()


def test_snowflake_hashes_as_google_says(warehouse: SnowflakeWarehouse) -> None:
    rows = [
        (1, " Jane.Doe@GMAIL.com ", "+1 (800) 555-0100"),
        # (not "0044 …": fakesnow runs Snowflake's LTRIM(x, '0') as if it had no second argument)
        (2, "j.doe@googlemail.com", "+44 20 7946 0000"),
        (3, "Jane.Doe@Example.com", "44 20 7946 0000"),
    ]
    warehouse.load_rows("analytics.people", ("id", "email", "phone"), rows)
    described = describe(warehouse.columns("select * from analytics.people"), warehouse.dialect)
    query = MappingQuery(
        SYNC, described, warehouse.dialect, ["email"], {"email": "gmail_email", "phone": "e164_phone"}
    )
    got = [
        json.loads(record)
        for (record,) in warehouse.fetch_all(
            f"select {query.record()} from ({query.select('select * from analytics.people')}) q "
            "order by cast(sb_key as integer)"
        )
    ]
    sha = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    assert got == [
        {"email": sha("janedoe@gmail.com"), "phone": sha("+18005550100")},
        {"email": sha("jdoe@googlemail.com"), "phone": sha("+442079460000")},
        {"email": sha("jane.doe@example.com"), "phone": sha("+442079460000")},
    ]
