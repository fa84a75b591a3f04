"""Snowflake through snowflake-connector-python: key-pair (or password) auth, qmark binding.

Every driver error goes through one mapper, ``classify``, which decides terminal or transient the
way dlt's Snowflake client does, on the error's class, ``errno`` and ``sqlstate`` (never on its text):

    driver error                                                  syncback error
    ------------------------------------------------------------  ----------------------------------
    credentials refused: sqlstate 28000, errno 390100 (user or    SecretError: check user and
      password), 390144 / 394300-394306 (JWT, key fingerprint),     private_key (or password)
      251008 (private key unusable)
    session ended: errno 390112 / 390114 (token expired)          WarehouseUnavailable (reconnect)
    login refused for another reason: other 390xxx (role,         ConfigError on the connection
      database or warehouse not granted, network policy), 403       fields (account, role,
      at login (errno 540001: account name), 251001 / 251005 /      warehouse, database)
      251006 (account, user or password empty), errno 606 (no
      active warehouse)
    statement cancelled or timed out: errno 604, 630              WarehouseUnavailable
    cannot reach Snowflake: OperationalError, InterfaceError,     WarehouseUnavailable
      HTTP 5xx / 429 / timeouts, errno 2500xx, 251011, 251012,
      sqlstate 08xxx (connection exceptions)
    the SQL is wrong: ProgrammingError (compilation errors,       ModelError with Snowflake's message
      missing objects, bad casts), IntegrityError, DataError,
      NotSupportedError
    any other DatabaseError / driver Error                        WarehouseUnavailable (dlt: transient)

Messages carry Snowflake's own message and errno, never bind values or secrets.

The session is pinned to UTC and to full-precision ISO output formats: the planner hashes
``cast(col as varchar)``, whose text follows these parameters, so an account-level change to them
would otherwise re-send every record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from syncback.errors import (
    ConfigError,
    ModelError,
    Problem,
    SecretError,
    SyncbackError,
    WarehouseUnavailable,
)
from syncback.secrets import SecretResolver
from syncback.spec import SnowflakeWarehouseConfig
from syncback.warehouses.dialect import Dialect, SnowflakeDialect

if TYPE_CHECKING:
    from snowflake.connector import SnowflakeConnection
    from snowflake.connector.cursor import SnowflakeCursor

T = TypeVar("T")

LOGIN_TIMEOUT_S = 60
LOAD_CHUNK_ROWS = 16_384  # rows per executemany: the connector sends each call as one array bind

_ISO_TIMESTAMP = "YYYY-MM-DD HH24:MI:SS.FF9"
SESSION_PARAMETERS: dict[str, str] = {
    "TIMEZONE": "UTC",
    "TIMESTAMP_TYPE_MAPPING": "TIMESTAMP_NTZ",  # `timestamp` in our DDL and casts means NTZ
    "TIMESTAMP_OUTPUT_FORMAT": f"{_ISO_TIMESTAMP} TZH:TZM",
    "TIMESTAMP_NTZ_OUTPUT_FORMAT": _ISO_TIMESTAMP,
    "TIMESTAMP_LTZ_OUTPUT_FORMAT": f"{_ISO_TIMESTAMP} TZH:TZM",
    "TIMESTAMP_TZ_OUTPUT_FORMAT": f"{_ISO_TIMESTAMP} TZH:TZM",
    "DATE_OUTPUT_FORMAT": "YYYY-MM-DD",
    "TIME_OUTPUT_FORMAT": "HH24:MI:SS.FF9",
    "QUERY_TAG": "syncback",
}

_CREDENTIALS_REFUSED = {390100, 390144, *range(394300, 394307), 251008}
_SESSION_ENDED = {390112, 390114}
_CANCELLED = {604, 630}
_NO_WAREHOUSE = 606
_EMPTY_SETTING = {251001, 251005, 251006}  # no account / user / password given
_NETWORK = {*range(250001, 250013), 251011, 251012}
_LOGIN_CODES = range(390000, 391000)
# the connector raises a 403 at login as ForbiddenError(errno=250001), which adds its HTTP base 290000
_LOGIN_FORBIDDEN = 290_000 + 250_001

# Snowflake makes a schema it creates the session's current schema (USE SCHEMA); see execute
_CREATE_SCHEMA = re.compile(r"^\s*create\s+(or\s+replace\s+)?(transient\s+)?schema\b", re.IGNORECASE)


class SnowflakeWarehouse:
    """A connection to Snowflake, configured by a ``type: snowflake`` warehouse in syncback.yaml."""

    dialect: Dialect = SnowflakeDialect()

    def __init__(
        self, config: SnowflakeWarehouseConfig, secrets: SecretResolver, name: str | None = None
    ) -> None:
        # imported here: the connector is heavy and most runs never touch Snowflake
        import snowflake.connector

        self.config = config
        # the config does not know its own name; the caller may pass it for clearer errors
        self._path = f"warehouses.{name or '<snowflake>'}"
        self._field = f"syncback.yaml: {self._path}"
        auth: dict[str, Any]
        if config.private_key is not None:
            auth = {"private_key": self._private_key_der(secrets)}
        else:
            assert config.password is not None  # the spec requires one of the two
            auth = {"password": secrets.resolve(config.password, where=f"{self._field}.password")}
        try:
            self._con: SnowflakeConnection = snowflake.connector.connect(
                account=config.account,
                user=config.user,
                role=config.role,
                warehouse=config.warehouse,
                database=config.database,
                schema=config.schema_,
                paramstyle="qmark",  # our SQL binds with `?`, sent to the server, never interpolated
                application="syncback",
                client_session_keep_alive=False,
                login_timeout=LOGIN_TIMEOUT_S,
                session_parameters=dict(SESSION_PARAMETERS),
                **auth,
            )
        except snowflake.connector.errors.Error as exc:
            raise self.classify(exc) from exc

    # ---- the Warehouse protocol ------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._cursor() as cursor:
            if not _CREATE_SCHEMA.match(sql):
                self._run(cursor, sql, params)
                return
            # creating the state schema would switch the session into it, and the model's
            # unqualified table names would then resolve there: switch back afterwards
            self._run(cursor, "select current_database(), current_schema()", ())
            row = self._call(cursor.fetchone)
            database, schema = tuple(row) if row else (None, None)
            self._run(cursor, sql, params)
            if database and schema:
                self._run(cursor, f"use schema {_quoted(database)}.{_quoted(schema)}", ())

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._cursor() as cursor:
            self._run(cursor, sql, params)
            return [tuple(row) for row in self._call(cursor.fetchall)]

    def stream(self, sql: str, chunk_size: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        # fetchmany walks the result chunks Snowflake hands out; the result never sits whole here
        with self._cursor() as cursor:
            self._run(cursor, sql, ())
            while rows := self._call(cursor.fetchmany, chunk_size):
                yield [tuple(row) for row in rows]

    def columns(self, sql: str) -> list[tuple[str, str]]:
        # describe compiles the query without running it; unquoted names come back UPPER case
        from snowflake.connector.constants import FIELD_ID_TO_NAME

        with self._cursor() as cursor:
            described = self._call(cursor.describe, f"select * from (\n{sql}\n) as model")
        columns = []
        for d in described or []:
            name = FIELD_ID_TO_NAME.get(d.type_code, str(d.type_code))
            if name == "FIXED":  # NUMBER(p, s): an integer when its scale is 0
                name = f"FIXED({d.precision or 38},{d.scale or 0})"
            columns.append((d.name, name))
        return columns

    def create_scratch(self, table: str, columns: str) -> None:
        # transient: no Fail-safe storage is paid for a table that lives for one plan or commit
        self.execute(f"create or replace transient table {table} ({columns})")

    def create_scratch_as(self, table: str, query: str) -> None:
        self.execute(f"create or replace transient table {table} as {query}")

    def stage_outcomes(self, table: str, receipt: bytes, seq: int, version: int, batch: int) -> None:
        # one statement a receipt: Snowflake parses it (a receipt stays far below the 16 MB bind limit)
        self.execute(
            f"insert into {table} select o.value[0]::varchar, o.value[1]::varchar, o.value[2]::varchar, "
            "o.value[4]::boolean, o.value[5]::varchar, o.value[6]::varchar, o.value[7]::varchar, "
            "o.value[3]::varchar, ?, ?, ? from table(flatten(input => parse_json(?):outcomes)) o",
            [seq, version, batch, receipt.decode("utf-8")],
        )

    def stage_outcome_files(self, table: str, receipts: Sequence[tuple[Path, int, int, int]]) -> None:
        for path, seq, version, batch in receipts:
            self.stage_outcomes(table, path.read_bytes(), seq, version, batch)

    def stage_unsent_files(
        self, table: str, batches: Sequence[tuple[Path, int, int, int]], reason: str
    ) -> None:
        from syncback.snapshot import OUTCOME_NAMES

        for path, seq, version, batch in batches:
            changes = json.loads(path.read_bytes())["changes"]
            rows = [
                (
                    c[0],
                    "undelivered",
                    c[3],
                    None,
                    c[1],
                    c[2],
                    c[5] if len(c) > 5 else None,
                    reason,
                    seq,
                    version,
                    batch,
                )
                for c in changes
            ]
            self.load_rows(table, OUTCOME_NAMES, rows)

    def load_rows(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        sql = f"insert into {table} ({', '.join(columns)}) values ({', '.join('?' for _ in columns)})"
        with self._cursor() as cursor:
            for start in range(0, len(rows), LOAD_CHUNK_ROWS):
                chunk = [tuple(row) for row in rows[start : start + LOAD_CHUNK_ROWS]]
                self._call(cursor.executemany, sql, chunk)

    def release_memory(self) -> None:
        pass  # the warehouse's memory is Snowflake's, not this process's

    def close(self) -> None:
        import snowflake.connector

        try:
            self._con.close()
        except snowflake.connector.errors.Error as exc:
            raise self.classify(exc) from exc

    # ---- errors ------------------------------------------------------------------------------

    def classify(self, exc: Exception) -> SyncbackError:
        """Return the syncback error a driver error means (the table in the module docstring)."""
        from snowflake.connector import errors as sf

        errno = int(getattr(exc, "errno", -1) or -1)
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        message = f"Snowflake error {errno}: {getattr(exc, 'raw_msg', None) or exc}"
        if sqlstate == "28000" or errno in _CREDENTIALS_REFUSED:
            secret = "private_key (its public key must be set on the user: ALTER USER ... SET RSA_PUBLIC_KEY)"
            if self.config.private_key is None:
                secret = "password"
            return SecretError(
                f"{self._field}: Snowflake refused the credentials of user {self.config.user!r} on account "
                f"{self.config.account!r}; check user and {secret}. {message}"
            )
        if errno in _SESSION_ENDED:
            return WarehouseUnavailable(f"the Snowflake session ended; reconnect and retry. {message}")
        login_refused = isinstance(exc, sf.ForbiddenError) and errno == _LOGIN_FORBIDDEN
        if login_refused or errno in _LOGIN_CODES or errno in _EMPTY_SETTING:
            return self._config_error("account, user, role, warehouse, database", f"login refused. {message}")
        if errno == _NO_WAREHOUSE:
            return self._config_error(
                "warehouse", f"no usable Snowflake warehouse: set one, grant USAGE. {message}"
            )
        if errno in _CANCELLED:
            return WarehouseUnavailable(f"Snowflake cancelled the statement or it timed out. {message}")
        if (
            isinstance(exc, sf.OperationalError | sf.InterfaceError)
            or errno in _NETWORK
            or sqlstate.startswith("08")
            or not isinstance(exc, sf.DatabaseError)
        ):
            return WarehouseUnavailable(f"cannot reach Snowflake account {self.config.account!r}. {message}")
        if isinstance(exc, sf.ProgrammingError | sf.IntegrityError | sf.DataError | sf.NotSupportedError):
            return ModelError(message)
        return WarehouseUnavailable(message)

    # ---- helpers -----------------------------------------------------------------------------

    def _config_error(self, fields: str, message: str) -> ConfigError:
        return ConfigError([Problem("syncback.yaml", f"{self._path} ({fields})", message)])

    def _private_key_der(self, secrets: SecretResolver) -> bytes:
        """Return the configured PEM private key as the DER PKCS8 bytes the connector takes."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        assert self.config.private_key is not None
        where = f"{self._field}.private_key"
        pem = secrets.resolve(self.config.private_key, where=where).strip()
        if "\\n" in pem and "\n" not in pem:
            pem = pem.replace("\\n", "\n")  # a PEM pasted into an env var with its newlines escaped
        passphrase = None
        if self.config.private_key_passphrase is not None:
            passphrase = secrets.resolve(
                self.config.private_key_passphrase, where=f"{self._field}.private_key_passphrase"
            ).encode()
        expected = (
            "give a PKCS8 PEM private key, the text from -----BEGIN PRIVATE KEY----- to "
            "-----END PRIVATE KEY----- (or -----BEGIN ENCRYPTED PRIVATE KEY----- with private_key_passphrase)"
        )
        try:
            key = serialization.load_pem_private_key(pem.encode(), password=passphrase)
        except TypeError:
            # cryptography says TypeError when the passphrase and the key's encryption disagree
            fix = "remove private_key_passphrase" if passphrase else "set private_key_passphrase"
            state = "is not encrypted" if passphrase else "is encrypted"
            raise SecretError(f"{where}: the private key {state}; {fix}") from None
        except (ValueError, UnsupportedAlgorithm):
            wrong = " or private_key_passphrase is wrong" if passphrase else ""
            raise SecretError(f"{where}: not a private key syncback can read{wrong}; {expected}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SecretError(f"{where}: Snowflake key-pair auth takes an RSA key; {expected}")
        return key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def _cursor(self) -> SnowflakeCursor:
        cursor: SnowflakeCursor = self._call(self._con.cursor)
        return cursor

    def _run(self, cursor: SnowflakeCursor, sql: str, params: Sequence[Any]) -> None:
        self._call(cursor.execute, sql, list(params) if params else None)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        import snowflake.connector

        try:
            return fn(*args)
        except snowflake.connector.errors.Error as exc:
            raise self.classify(exc) from exc


def _quoted(identifier: str) -> str:
    """Return ``identifier`` as a quoted Snowflake identifier, exactly as the session reported it."""
    return '"' + identifier.replace('"', '""') + '"'
