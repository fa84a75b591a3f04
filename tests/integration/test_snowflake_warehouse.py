"""SnowflakeWarehouse against fakesnow (Snowflake SQL run on DuckDB), then the real planner on it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakesnow
import pytest
import snowflake.connector
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fakesnow.cursor import FakeSnowflakeCursor
from snowflake.connector import errors as sf

from syncback.batches import LocalBatchStore
from syncback.commit import outcome_row
from syncback.delivery import receipt
from syncback.destinations.base import Change, Outcome
from syncback.errors import ConfigError, ModelError, SecretError, WarehouseUnavailable
from syncback.planner import Planner, PlanResult, change_from_json
from syncback.secrets import SecretResolver
from syncback.snapshot import SnapshotTables, apply_outcomes, outcome_stage, read_snapshot, stage_rows
from syncback.spec import SnowflakeWarehouseConfig, SyncSpec
from syncback.warehouses import snowflake as snowflake_module
from syncback.warehouses.snowflake import SnowflakeWarehouse

# fakesnow's own warning about how it copies DuckDB results; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

PASSWORD_ENV = {"SF_PASSWORD": "hunter2-not-for-logs"}


def snowflake_config(**overrides: Any) -> SnowflakeWarehouseConfig:
    fields: dict[str, Any] = {
        "type": "snowflake",
        "account": "acme-prod",
        "user": "SYNCBACK",
        "password": "env:SF_PASSWORD",
        "role": "SYNCBACK_ROLE",
        "warehouse": "SYNC_WH",
        "database": "analytics_db",
        "schema": "analytics",
    }
    fields.update(overrides)
    return SnowflakeWarehouseConfig.model_validate({k: v for k, v in fields.items() if v is not None})


@pytest.fixture
def warehouse() -> Iterator[SnowflakeWarehouse]:
    with fakesnow.patch():
        wh = SnowflakeWarehouse(snowflake_config(), SecretResolver(environ=PASSWORD_ENV), name="snowflake")
        yield wh
        wh.close()


@pytest.fixture
def captured_connect(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the connector's connect with one that records its keyword arguments."""
    captured: dict[str, Any] = {}

    def connect(**kwargs: Any) -> object:
        captured.update(kwargs)
        return object()

    monkeypatch.setattr(snowflake.connector, "connect", connect)
    return captured


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pkcs8_pem(key: rsa.RSAPrivateKey, passphrase: bytes | None = None) -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


def der(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# ---- the protocol ------------------------------------------------------------------------------


def test_execute_and_fetch_all_bind_qmark_parameters(warehouse: SnowflakeWarehouse) -> None:
    # Given a table with rows inserted through ? placeholders
    warehouse.execute("create table analytics.people (id integer, name varchar)")
    warehouse.execute("insert into analytics.people values (?, ?), (?, ?)", [1, "Ada", 2, "Grace"])

    # When we fetch with a bound filter
    rows = warehouse.fetch_all("select id, name from analytics.people where id >= ? order by id", [2])

    # Then only the matching row comes back, as a tuple
    assert rows == [(2, "Grace")]


def test_stream_yields_chunks_no_larger_than_chunk_size_without_fetchall(
    warehouse: SnowflakeWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 25 rows, and a cursor whose fetchall would fail (a model must never be fetched whole)
    warehouse.execute("create table analytics.numbers (n integer)")
    warehouse.load_rows("analytics.numbers", ["n"], [(i,) for i in range(25)])

    def no_fetchall(self: object) -> None:
        raise AssertionError("stream called fetchall")

    monkeypatch.setattr(FakeSnowflakeCursor, "fetchall", no_fetchall)

    # When we stream them 10 at a time
    chunks = list(warehouse.stream("select n from analytics.numbers order by n", chunk_size=10))

    # Then they arrive in chunks of 10, 10 and 5, in order, nothing lost
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert [row[0] for chunk in chunks for row in chunk] == list(range(25))


def test_columns_describes_the_model_without_running_it(warehouse: SnowflakeWarehouse) -> None:
    # Given a model that fails only when it is run (the cast fails on its value)
    model = "select cast('not a number' as integer) as lead_score, 'x' as email, true as is_active"

    # When we ask for its columns
    columns = warehouse.columns(model)

    # Then we get Snowflake's upper-case names and type names, and running it really would fail
    assert columns == [("LEAD_SCORE", "FIXED(38,0)"), ("EMAIL", "TEXT"), ("IS_ACTIVE", "BOOLEAN")]
    with pytest.raises(ModelError):
        warehouse.fetch_all(model)


def test_load_rows_round_trips_nulls_unicode_long_and_hostile_strings(
    warehouse: SnowflakeWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given awkward rows, and chunks of 3 rows so that several executemany calls are needed
    monkeypatch.setattr(snowflake_module, "LOAD_CHUNK_ROWS", 3)
    calls: list[int] = []
    real_executemany = FakeSnowflakeCursor.executemany

    def counting_executemany(self: FakeSnowflakeCursor, command: str, seqparams: Any, **kw: Any) -> Any:
        calls.append(len(seqparams))
        return real_executemany(self, command, seqparams, **kw)

    monkeypatch.setattr(FakeSnowflakeCursor, "executemany", counting_executemany)
    rows = [
        ("k1", None, None),
        ("k2", "Zoë Ångström 日本語 🦄", "e\u0301"),  # combining accent stays two code points
        ("k3", "x" * 200_000, ""),
        ("k4", 'it\'s a "quote"; drop table t; --', "what? ?"),  # a ? in data is not a placeholder
        ("k5", "line\nbreak\ttab", "\\backslash"),
        ("k6", "   ", None),
        ("k7", "last", "row"),
    ]
    warehouse.execute("create table analytics.awkward (key varchar, a varchar, b varchar)")

    # When we load them and read them back
    warehouse.load_rows("analytics.awkward", ("key", "a", "b"), rows)
    back = warehouse.fetch_all("select key, a, b from analytics.awkward order by key")

    # Then every value is exactly what went in, sent in ceil(7 / 3) = 3 bulk calls
    assert back == rows
    assert calls == [3, 3, 1]


def test_creating_a_schema_keeps_the_session_in_the_configured_schema(warehouse: SnowflakeWarehouse) -> None:
    # Given a model table named without its schema (Snowflake resolves it in the session's schema)
    warehouse.execute("create table analytics.orders (id integer)")
    warehouse.execute("insert into analytics.orders values (1)")

    # When the state schema is created (Snowflake switches the session into a schema it creates)
    warehouse.execute("create schema if not exists syncback")

    # Then unqualified names still resolve in the configured schema
    assert warehouse.fetch_all("select current_schema()") == [("ANALYTICS",)]
    assert warehouse.fetch_all("select count(*) from orders") == [(1,)]


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "select * from analytics.no_such_table where secret_col = ?",
        "selec broken syntax where x = ?",
    ],
)
def test_bad_sql_is_a_model_error_without_bind_values(warehouse: SnowflakeWarehouse, sql: str) -> None:
    # Given SQL that Snowflake cannot compile, with a sensitive bind value
    # When it runs
    with pytest.raises(ModelError) as raised:
        warehouse.fetch_all(sql, ["ssn-123-45-6789"])

    # Then it is a ModelError carrying Snowflake's errno, never the bound value
    assert "Snowflake error" in str(raised.value)
    assert "ssn-123-45-6789" not in str(raised.value)


@pytest.mark.parametrize(
    ("driver_error", "expected"),
    [
        (
            sf.OperationalError(msg="Connection reset by peer", errno=250003, sqlstate="08001"),
            WarehouseUnavailable,
        ),
        (sf.InterfaceError(msg="socket closed", errno=250002), WarehouseUnavailable),
        (
            # raised as the connector does at login: errno 250001 (it adds its HTTP base), sqlstate 08001
            sf.ServiceUnavailableError(
                msg="Failed to connect to DB. Service is unavailable", errno=250001, sqlstate="08001"
            ),
            WarehouseUnavailable,
        ),
        (
            sf.DatabaseError(
                msg="Incorrect username or password was specified.", errno=390100, sqlstate="28000"
            ),
            SecretError,
        ),
        (sf.DatabaseError(msg="JWT token is invalid.", errno=390144, sqlstate="08001"), SecretError),
        (
            sf.DatabaseError(
                msg="Role 'X' specified in the connect string is not granted to this user.",
                errno=390189,
                sqlstate="08004",
            ),
            ConfigError,
        ),
        (
            sf.ForbiddenError(
                msg="Failed to connect to DB. Verify the account name is correct",
                errno=250001,
                sqlstate="08001",
            ),
            ConfigError,
        ),
        (sf.ForbiddenError(), WarehouseUnavailable),  # a 403 on a later request, e.g. a result chunk
        (
            sf.DatabaseError(msg="Authentication token has expired.", errno=390114, sqlstate="08001"),
            WarehouseUnavailable,
        ),
    ],
    ids=[
        "network",
        "interface",
        "http-503",
        "wrong-password",
        "jwt",
        "role",
        "account-403",
        "other-403",
        "token-expired",
    ],
)
def test_connect_errors_map_onto_terminal_or_transient(
    monkeypatch: pytest.MonkeyPatch, driver_error: Exception, expected: type[Exception]
) -> None:
    # Given a connector whose connect fails with a driver error
    def connect(**kwargs: Any) -> object:
        raise driver_error

    monkeypatch.setattr(snowflake.connector, "connect", connect)

    # When the warehouse connects
    with pytest.raises(expected) as raised:
        SnowflakeWarehouse(snowflake_config(), SecretResolver(environ=PASSWORD_ENV), name="snowflake")

    # Then it is the syncback error of that class, which never echoes the password
    assert type(raised.value) is expected
    assert PASSWORD_ENV["SF_PASSWORD"] not in str(raised.value)


@pytest.mark.parametrize(
    ("driver_error", "expected"),
    [
        (
            sf.ProgrammingError(
                msg="Statement reached its statement or warehouse timeout", errno=630, sqlstate="57014"
            ),
            WarehouseUnavailable,
        ),
        (
            sf.ProgrammingError(
                msg="No active warehouse selected in the current session.", errno=606, sqlstate="57P03"
            ),
            ConfigError,
        ),
        (
            sf.ProgrammingError(
                msg="SQL compilation error: invalid identifier 'EMAL'", errno=904, sqlstate="42000"
            ),
            ModelError,
        ),
        (sf.InternalError(msg="internal error", errno=-1), WarehouseUnavailable),
    ],
    ids=["timeout", "no-warehouse", "invalid-identifier", "internal"],
)
def test_query_errors_map_onto_terminal_or_transient(
    warehouse: SnowflakeWarehouse, driver_error: Exception, expected: type[Exception]
) -> None:
    # Given / When a query error reaches the one mapper
    mapped = warehouse.classify(driver_error)

    # Then it is the error the module's table promises
    assert type(mapped) is expected


def test_credentials_refused_names_the_fields_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given Snowflake refuses the password at login
    def connect(**kwargs: Any) -> object:
        raise sf.DatabaseError(
            msg="Incorrect username or password was specified.", errno=390100, sqlstate="28000"
        )

    monkeypatch.setattr(snowflake.connector, "connect", connect)

    # When the warehouse connects
    with pytest.raises(SecretError) as raised:
        SnowflakeWarehouse(snowflake_config(), SecretResolver(environ=PASSWORD_ENV), name="prod")

    # Then the message says the credentials were refused and which fields to check
    message = str(raised.value)
    assert "syncback.yaml: warehouses.prod" in message
    assert "refused the credentials" in message
    assert "check user and password" in message


# ---- key-pair auth -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["plain", "encrypted", "escaped-newlines"])
def test_key_pair_auth_passes_der_pkcs8_bytes_to_the_connector(
    captured_connect: dict[str, Any], rsa_key: rsa.RSAPrivateKey, form: str
) -> None:
    # Given a PEM private key in an environment variable (encrypted, or pasted with \n escapes)
    environ = {"SF_KEY": pkcs8_pem(rsa_key, b"s3cret" if form == "encrypted" else None)}
    overrides: dict[str, Any] = {"password": None, "private_key": "env:SF_KEY"}
    if form == "encrypted":
        environ["SF_KEY_PASS"] = "s3cret"
        overrides["private_key_passphrase"] = "env:SF_KEY_PASS"
    if form == "escaped-newlines":
        environ["SF_KEY"] = environ["SF_KEY"].replace("\n", "\\n")

    # When the warehouse connects
    SnowflakeWarehouse(snowflake_config(**overrides), SecretResolver(environ=environ))

    # Then the connector gets the key as unencrypted DER PKCS8 bytes, no password, and our settings
    assert captured_connect["private_key"] == der(rsa_key)
    assert "password" not in captured_connect
    assert captured_connect["paramstyle"] == "qmark"
    assert captured_connect["application"] == "syncback"
    assert captured_connect["client_session_keep_alive"] is False
    assert captured_connect["login_timeout"] > 0
    assert captured_connect["session_parameters"]["TIMEZONE"] == "UTC"
    assert {
        k: captured_connect[k] for k in ("account", "user", "role", "warehouse", "database", "schema")
    } == {
        "account": "acme-prod",
        "user": "SYNCBACK",
        "role": "SYNCBACK_ROLE",
        "warehouse": "SYNC_WH",
        "database": "analytics_db",
        "schema": "analytics",
    }


def test_a_pem_that_does_not_parse_is_a_secret_error_without_the_key(
    captured_connect: dict[str, Any], rsa_key: rsa.RSAPrivateKey
) -> None:
    # Given a PEM whose body was cut short when it was pasted
    pem = pkcs8_pem(rsa_key)
    broken = pem[: len(pem) // 2] + "\n-----END PRIVATE KEY-----\n"
    body_line = pem.splitlines()[3]
    config = snowflake_config(password=None, private_key="env:SF_KEY")

    # When the warehouse connects
    with pytest.raises(SecretError) as raised:
        SnowflakeWarehouse(config, SecretResolver(environ={"SF_KEY": broken}), name="prod")

    # Then the error names the field and the expected format, never the key, and nothing connected
    message = str(raised.value)
    assert message.startswith("syncback.yaml: warehouses.prod.private_key:")
    assert "PKCS8" in message and "-----BEGIN PRIVATE KEY-----" in message
    assert body_line not in message
    assert raised.value.__suppress_context__  # the parser's own error is not printed with ours
    assert captured_connect == {}


def test_an_encrypted_key_without_passphrase_says_to_set_it(
    captured_connect: dict[str, Any], rsa_key: rsa.RSAPrivateKey
) -> None:
    # Given an encrypted key and no private_key_passphrase
    config = snowflake_config(password=None, private_key="env:SF_KEY")

    # When the warehouse connects
    with pytest.raises(SecretError, match="set private_key_passphrase"):
        SnowflakeWarehouse(config, SecretResolver(environ={"SF_KEY": pkcs8_pem(rsa_key, b"pw")}))

    # Then nothing was sent to Snowflake
    assert captured_connect == {}


# ---- the planner and the snapshot on Snowflake SQL -----------------------------------------------


def contacts_sync() -> SyncSpec:
    return SyncSpec.model_validate(
        {
            "name": "contacts",
            "warehouse": "snowflake",
            "table": "contacts",  # unqualified on purpose: it must resolve in the configured schema
            "primary_key": "email",
            "mode": "upsert",
            "destination": {
                "type": "hubspot",
                "object": "contacts",
                "id_property": "email",
                "token": "env:HUBSPOT_TOKEN",
                "base_url": "http://127.0.0.1:1",
            },
            "mapping": {"email": "email", "firstname": "first_name", "lead_score": "score"},
            "batch_size": 10,
        }
    )


def planned_changes(store: LocalBatchStore, plan: PlanResult) -> list[Change]:
    return [change_from_json(item) for ref in plan.batches for item in store.get_json(ref.key)["changes"]]


def delivered(store: LocalBatchStore, plan: PlanResult) -> list[tuple[str, str, str | None, str]]:
    """Return (key, row_hash, destination_id, action) of every planned change, as if all were delivered."""
    out: list[tuple[str, str, str | None, str]] = []
    for ref in plan.batches:
        for change in map(change_from_json, store.get_json(ref.key)["changes"]):
            out.append((change.key, change.row_hash or "", change.destination_id, change.action))
    return out


def test_planner_and_snapshot_run_on_snowflake_sql(warehouse: SnowflakeWarehouse, tmp_path: Path) -> None:
    # Given a model of 50 rows: 47 good, one null key, two sharing a key
    warehouse.execute("create table analytics.contacts (email varchar, first_name varchar, score integer)")
    rows: list[tuple[Any, ...]] = [(f"p{i:02d}@example.com", f"Name {i} ✓", i) for i in range(47)]
    rows += [(None, "no key", 1), ("twin@example.com", "A", 1), ("twin@example.com", "B", 2)]
    warehouse.load_rows("analytics.contacts", ("email", "first_name", "score"), rows)
    sync, store = contacts_sync(), LocalBatchStore(tmp_path)
    tables = SnapshotTables("syncback", sync.name)

    # When the first run is planned
    first = Planner(sync, warehouse, "syncback").plan("run-1", store)

    # Then every good row is added and the three bad ones are invalid, in batches of 10
    c = first.counts
    assert (c.added, c.changed, c.removed, c.unchanged, c.invalid) == (47, 0, 0, 0, 3)
    assert first.snapshot_size == 0
    assert [b.count for b in first.batches] == [10, 10, 10, 10, 7]
    reasons = [r.reason for r in first.invalid_sample]
    assert reasons == ["primary key email is null (1 rows)", "duplicate primary key (2 rows share it)"]

    # When the destination accepted everything and the commit advances the snapshot as commit_run
    # does: each receipt loaded as it is, parsed by Snowflake
    changes = planned_changes(store, first)
    stage = outcome_stage(warehouse, tables)
    document = receipt(
        "b", [Outcome(c.key, "delivered", f"hs-{c.key}", created=True) for c in changes], changes
    )
    warehouse.stage_outcomes(stage, json.dumps(document).encode(), 1, first.version, 0)
    assert warehouse.fetch_all(f"select count(*), count(distinct identity) from {stage}") == [(47, 47)]
    apply_outcomes(warehouse, tables, stage, "run-1", first.target, dt.datetime(2026, 1, 2, tzinfo=dt.UTC))

    # And then three rows change, two disappear and one is new
    warehouse.execute(
        "update analytics.contacts set first_name = ? where email in (?, ?, ?)",
        ["Renamed", "p01@example.com", "p02@example.com", "p03@example.com"],
    )
    warehouse.execute(
        "delete from analytics.contacts where email in (?, ?)", ["p10@example.com", "p11@example.com"]
    )
    warehouse.execute("insert into analytics.contacts values (?, ?, ?)", ["new@example.com", "Newcomer", 99])
    second = Planner(sync, warehouse, "syncback").plan("run-2", store)

    # Then the plan sees exactly those changes against a snapshot of 47
    c = second.counts
    assert (c.added, c.changed, c.removed, c.unchanged, c.invalid) == (1, 3, 2, 42, 3)
    assert second.snapshot_size == 47
    changes = delivered(store, second)
    by_action = {a: sorted(k for k, _, _, act in changes if act == a) for a in ("upsert", "forget")}
    assert by_action["forget"] == ["p10@example.com", "p11@example.com"]
    assert by_action["upsert"] == ["new@example.com", "p01@example.com", "p02@example.com", "p03@example.com"]
    assert {k: d for k, _, d, _ in changes if k == "p01@example.com"} == {
        "p01@example.com": "hs-p01@example.com"
    }

    # When that run is committed, the changed rows without a new destination id (rows made in
    # Python, as a replay stages them)
    stage = outcome_stage(warehouse, tables)
    rows = [
        outcome_row(Outcome(c.key, "delivered"), c, 1, second.version, 0)
        for c in planned_changes(store, second)
    ]
    stage_rows(warehouse, stage, rows)
    apply_outcomes(warehouse, tables, stage, "run-2", second.target, dt.datetime(2026, 1, 3, tzinfo=dt.UTC))
    entries = read_snapshot(warehouse, tables, ["p01@example.com", "p10@example.com", "p05@example.com"])

    # Then changed rows have their new hash and version and keep their destination id; removed
    # ones are tombstones (a replay of their old versions stays stale)
    new_hash = {k: h for k, h, _, _ in changes}["p01@example.com"]
    assert entries["p01@example.com"].row_hash == new_hash
    assert entries["p01@example.com"].destination_id == "hs-p01@example.com"
    assert entries["p01@example.com"].version == second.version
    assert entries["p05@example.com"].version == first.version
    assert entries["p10@example.com"].removed and entries["p10@example.com"].version == second.version

    # And a third plan finds nothing left to do
    c = Planner(sync, warehouse, "syncback").plan("run-3", store).counts
    assert (c.added, c.changed, c.removed, c.unchanged, c.invalid) == (0, 0, 0, 46, 3)


# ---- least privilege: the state schema's own credentials -----------------------------------


class Logged:
    """A warehouse connection that notes every SQL text it is given, for one login."""

    def __init__(self, inner: SnowflakeWarehouse, log: list[tuple[str, str]]) -> None:
        self._inner, self._log = inner, log
        self.dialect = inner.dialect

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        def noted(*args: Any, **kwargs: Any) -> Any:
            texts = [a for a in args if isinstance(a, str)]
            self._log.extend((self._inner.config.user, t) for t in texts)
            return method(*args, **kwargs)

        return noted


STATE_ACCESS = {
    "user": "SYNCBACK_STATE",
    "role": "SYNCBACK_STATE",
    "password": "env:SF_STATE_PASSWORD",
    "stage_schema": "syncback_stage",
}


def test_with_state_credentials_the_model_never_runs_as_the_state_role_and_plans_the_same(
    tmp_path: Path,
) -> None:
    # Given a model, and a warehouse whose state schema has a login of its own
    secrets = SecretResolver(environ={**PASSWORD_ENV, "SF_STATE_PASSWORD": "state-pw"})
    config = snowflake_config(user="SYNCBACK_MODELS", role="SYNCBACK_MODELS", state_access=STATE_ACCESS)
    sync = contacts_sync().model_copy(update={"model": "select * from analytics.contacts where score >= 0"})
    log: list[tuple[str, str]] = []
    with fakesnow.patch():
        state = SnowflakeWarehouse(config.for_state(), secrets, "prod.state_access")
        models = SnowflakeWarehouse(config, secrets, "prod")
        models.execute("create table analytics.contacts (email varchar, first_name varchar, score integer)")
        models.load_rows(
            "analytics.contacts",
            ("email", "first_name", "score"),
            [(f"p{i}@x.io", f"N{i}", i) for i in range(30)],
        )
        models.execute("create schema if not exists analytics_db.syncback_stage")
        # When a run is planned with the two logins, and another with one
        handed = Planner(sync, Logged(state, log), "syncback", Logged(models, log), "syncback_stage")  # type: ignore[arg-type]
        split = handed.plan("run-1", LocalBatchStore(tmp_path / "split"))
        single = Planner(sync, models, "syncback_single").plan("run-1", LocalBatchStore(tmp_path / "single"))
        left = models.fetch_all(
            "select count(*) from information_schema.tables where table_schema = 'SYNCBACK_STAGE'"
        )
        state.close()
        models.close()
    # Then the model's SQL ran only as the models' user, which never named the state schema
    assert all(user == "SYNCBACK_MODELS" for user, sql in log if "where score >= 0" in sql)
    assert any("where score >= 0" in sql for _, sql in log)
    assert not [sql for user, sql in log if user == "SYNCBACK_MODELS" and "syncback." in sql.lower()]
    # and the state's user read the model's rows only from the hand-over table, its columns only those planned
    handover = [
        sql for user, sql in log if user == "SYNCBACK_MODELS" and "create or replace transient" in sql
    ]
    assert len(handover) == 1 and '"EMAIL", "FIRST_NAME", "SCORE"' in handover[0].upper()
    # And the plan is the one a single login makes; the hand-over table is gone after it
    assert split.counts == single.counts and split.counts.added == 30
    assert [b.count for b in split.batches] == [b.count for b in single.batches]
    assert left == [(0,)]


def test_state_credentials_log_in_as_the_state_user_and_role(captured_connect: dict[str, Any]) -> None:
    secrets = SecretResolver(environ={**PASSWORD_ENV, "SF_STATE_PASSWORD": "state-pw"})
    config = snowflake_config(user="SYNCBACK_MODELS", role="SYNCBACK_MODELS", state_access=STATE_ACCESS)
    SnowflakeWarehouse(config.for_state(), secrets, "prod.state_access")
    assert (captured_connect["user"], captured_connect["role"], captured_connect["password"]) == (
        "SYNCBACK_STATE",
        "SYNCBACK_STATE",
        "state-pw",
    )
    assert captured_connect["database"] == "analytics_db"  # the same account and database
    SnowflakeWarehouse(config, secrets, "prod")
    assert (captured_connect["user"], captured_connect["role"]) == ("SYNCBACK_MODELS", "SYNCBACK_MODELS")


@pytest.mark.parametrize(
    ("access", "words"),
    [
        ({**STATE_ACCESS, "password": None}, "give exactly one of private_key"),
        ({**STATE_ACCESS, "stage_schema": "bad schema"}, "stage_schema"),
        ({k: v for k, v in STATE_ACCESS.items() if k != "role"}, "role"),
        ({**STATE_ACCESS, "password": "in-the-file"}, "secrets are never written in the file"),
    ],
)
def test_a_wrong_state_access_block_is_refused_naming_the_field(access: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError) as caught:
        snowflake_config(state_access={k: v for k, v in access.items() if v is not None})
    assert "state_access" in str(caught.value) and words in str(caught.value)


def test_a_run_with_state_credentials_goes_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a project on Snowflake whose state schema has its own login, and a HubSpot sandbox
    from syncback.cli import main
    from syncback.sandbox.hubspot import HubSpotSandbox
    from tests.conftest import write_project

    for name, value in {**PASSWORD_ENV, "SF_STATE_PASSWORD": "state-pw", "HUBSPOT_TOKEN": "t"}.items():
        monkeypatch.setenv(name, value)
    with fakesnow.patch(), HubSpotSandbox(token="t", requests_per_window=None) as sandbox:
        spec = contacts_sync().model_dump(by_alias=True, exclude_unset=True, mode="json")
        spec["destination"]["base_url"] = sandbox.url
        root = write_project(tmp_path, spec)
        warehouse = snowflake_config(state_access=STATE_ACCESS).model_dump(
            by_alias=True, exclude_none=True, mode="json"
        )
        (root / "syncback.yaml").write_text(
            json.dumps(
                {
                    "warehouses": {"snowflake": warehouse},
                    "state": {"warehouse": "snowflake", "schema": "syncback"},
                }
            )
        )
        seed = SnowflakeWarehouse(snowflake_config(), SecretResolver(environ=PASSWORD_ENV), "seed")
        seed.execute("create table analytics.contacts (email varchar, first_name varchar, score integer)")
        seed.load_rows(
            "analytics.contacts",
            ("email", "first_name", "score"),
            [(f"p{i}@x.io", f"N{i}", i) for i in range(12)],
        )
        seed.execute("create schema if not exists analytics_db.syncback_stage")
        # When it runs twice, the second time with one row changed
        assert main(["--project", str(root), "run", "contacts"]) == 0
        seed.execute("update analytics.contacts set first_name = 'Changed' where email = 'p3@x.io'")
        assert main(["--project", str(root), "run", "contacts"]) == 0
        snapshot = seed.fetch_all("select count(*) from syncback.snapshot__contacts")
        runs = seed.fetch_all("select status, added, changed from syncback.sync_runs order by started_at")
        seed.close()
    # Then the records are in HubSpot, and the state schema holds the snapshot and the history
    assert len(sandbox.objects("contacts")) == 12
    assert snapshot == [(12,)]
    assert runs == [("succeeded", 12, 0), ("succeeded", 0, 1)]
