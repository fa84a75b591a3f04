"""How the SQL that syncback generates is spelled on each warehouse, and what kind of value a type is.

The mapping (``mapping.py``) and the planner write SQL through a ``Dialect``: the few conversions
whose spelling differs between DuckDB and Snowflake live here and nowhere else. Every column type
a model can have is first sorted into a ``Kind``; a conversion takes and gives typed expressions,
so that what the SQL does with a value is decided when the SQL is written, not row by row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

#: integers beyond this are sent as strings: JSON readers in JavaScript round them otherwise
MAX_SAFE_INTEGER = 2**53 - 1


class Kind(Enum):
    TEXT = "text"
    INTEGER = "integer"
    DECIMAL = "decimal"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"  # without a zone: taken as UTC
    TIMESTAMPTZ = "timestamp with time zone"
    OTHER = "other"  # time, uuid, JSON, lists, structs: sent as the warehouse renders them
    BINARY = "binary"  # no JSON form: the model must cast it


@dataclass(frozen=True)
class Typed:
    """An SQL expression and the kind of value it yields; ``sqltype`` keeps a decimal's precision."""

    sql: str
    kind: Kind
    sqltype: str = ""


def literal(text: str) -> str:
    """Return ``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


_SPACE = "'^[[:space:]]+|[[:space:]]+$'"


class Dialect:
    """The SQL both warehouses share; subclasses spell what differs."""

    name = "sql"
    #: from how many outcomes a commit writes the snapshot anew beside itself and swaps it in,
    #: rather than a DELETE and an INSERT (None: never; the warehouse does large DELETEs well)
    rewrite_from_rows: int | None = None

    # ---- names and kinds ---------------------------------------------------------------------

    def quote(self, identifier: str) -> str:
        """Return ``identifier`` quoted, exactly as the warehouse reported it."""
        return '"' + identifier.replace('"', '""') + '"'

    def kind(self, type_name: str) -> tuple[Kind, str]:
        """Return the kind of a column type as ``Warehouse.columns`` reports it, and its SQL type."""
        raise NotImplementedError

    # ---- conversions: each returns SQL that is NULL where the value cannot be converted ----------

    def finite(self, sql: str) -> str:
        """Return SQL that is true when a double is neither NaN nor infinite."""
        raise NotImplementedError

    def to_double(self, sql: str) -> str:
        return f"cast({sql} as double)"

    def text_to_double(self, sql: str) -> str:
        raise NotImplementedError

    def text_to_decimal(self, sql: str) -> str:
        """Return a text parsed as a number with 10 decimals (NULL if it is not one)."""
        raise NotImplementedError

    def text_to_integer(self, sql: str) -> str:
        """Return a text of digits (an optional sign) as a 38-digit integer, NULL otherwise."""
        raise NotImplementedError

    def to_integer(self, sql: str) -> str:
        raise NotImplementedError

    def text_to_date(self, sql: str) -> str:
        raise NotImplementedError

    def text_to_utc(self, sql: str) -> str:
        """Return a text parsed as a timestamp (zone given, or UTC) as a UTC timestamp without zone."""
        raise NotImplementedError

    def utc(self, sql: str) -> str:
        """Return a timestamp with time zone as the UTC timestamp without zone."""
        raise NotImplementedError

    def date_text(self, sql: str) -> str:
        raise NotImplementedError

    def seconds_text(self, sql: str) -> str:
        """Return ``YYYY-MM-DDTHH:MM:SS`` of a timestamp without zone."""
        raise NotImplementedError

    def fraction(self, sql: str) -> tuple[str, str]:
        """Return (microseconds, milliseconds) within the second of a timestamp, as integers."""
        raise NotImplementedError

    def exact_cast(self, sql: str, sqltype: str) -> str:
        """Return ``sql`` cast to ``sqltype``, NULL where it does not fit."""
        return f"cast({sql} as {sqltype})"

    def varchar(self, sql: str) -> str:
        return f"cast({sql} as varchar)"

    def json_scalar(self, sql: str) -> str:
        """Return the JSON text of a string, a double or a nested value (NULL stays NULL)."""
        raise NotImplementedError

    def sha256(self, sql: str) -> str:
        raise NotImplementedError

    def md5(self, sql: str) -> str:
        return f"md5({sql})"

    def row_hash(self, target: str, shape: str, values: Sequence[str], record: str) -> str:
        """Return SQL of the hash the snapshot keeps of a record, to tell an unchanged row.

        ``values`` are the record's fields in name order, ``record`` its JSON text and ``shape`` a
        digest of how the values become that text.
        """
        return self.kept_hash(self.compact_row_hash(target, shape, values, record))

    def compact_row_hash(self, target: str, shape: str, values: Sequence[str], record: str) -> str:
        """Return SQL of the hash in the form the plan's join compares. Here: md5 of the target and
        the text, kept as it is."""
        return self.md5(f"{literal(target)} || {record}")

    def kept_hash(self, sql: str) -> str:
        """Return SQL of the text the snapshot keeps of a compact hash."""
        return sql

    def compact_hash(self, sql: str) -> str:
        """Return SQL of a kept hash in its compact form (``compact_row_hash``)."""
        return sql

    def legacy_row_hash(self, target: str, record: str) -> str | None:
        """Return SQL of the hash older releases kept, when it differs from ``row_hash`` (else None)."""
        return None

    def trim(self, sql: str) -> str:
        """Return a text without the white space around it (spaces, tabs, line breaks)."""
        raise NotImplementedError

    def remove_all(self, sql: str, pattern: str) -> str:
        """Return a text without any match of the regular expression ``pattern``."""
        raise NotImplementedError

    # ---- shared: built on the spellings above --------------------------------------------------

    def iso(self, value: Typed) -> str:
        """Return ISO 8601 text of a date (``YYYY-MM-DD``) or a timestamp in UTC (``...Z``)."""
        if value.kind is Kind.DATE:
            return self.date_text(value.sql)
        sql = self.utc(value.sql) if value.kind is Kind.TIMESTAMPTZ else value.sql
        micros, millis = self.fraction(sql)
        # milliseconds when the second has a fraction, as JavaScript's toISOString writes them
        fraction = f"case when {micros} <> 0 then '.' || lpad({self.varchar(millis)}, 3, '0') else '' end"
        return f"({self.seconds_text(sql)} || {fraction} || 'Z')"

    def text(self, value: Typed) -> str:
        """Return the text form of a value: what the ``string`` transform makes of it."""
        sql, kind = value.sql, value.kind
        if kind is Kind.TEXT:
            return sql
        if kind is Kind.BOOLEAN:
            return f"(case when {sql} then 'true' when not {sql} then 'false' end)"
        if kind is Kind.FLOAT:
            # a whole number reads as one: 3, not 3.0
            whole = f"{self.finite(sql)} and {sql} = floor({sql}) and abs({sql}) < 1e15"
            return (
                f"(case when {whole} then {self.varchar(self.to_integer(sql))} else {self.varchar(sql)} end)"
            )
        if kind in (Kind.DATE, Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
            return self.iso(value)
        return self.varchar(sql)

    def json(self, value: Typed) -> str:
        """Return the JSON text of a value, as every JSON reader takes it exactly (NULL stays NULL)."""
        sql, kind = value.sql, value.kind
        if kind is Kind.INTEGER:
            return self._json_integer(sql)
        if kind is Kind.DECIMAL:
            as_double = self.to_double(sql)
            # a number when the double a reader makes of it is exactly this decimal, else exact text
            return (
                f"(case when {sql} = trunc({sql}) then {self._json_integer(self.to_integer(sql))} "
                f"when {self.exact_cast(as_double, value.sqltype)} = {sql} then {self.json_scalar(as_double)} "
                f"else '\"' || {self.varchar(sql)} || '\"' end)"
            )
        if kind is Kind.FLOAT:
            return f"(case when {self.finite(sql)} then {self.json_scalar(sql)} end)"
        if kind is Kind.BOOLEAN:
            return self.text(value)
        if kind in (Kind.DATE, Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
            return f"('\"' || {self.iso(value)} || '\"')"
        return self.json_scalar(sql)

    def _json_integer(self, sql: str) -> str:
        text = self.varchar(sql)
        return f"(case when abs({sql}) <= {MAX_SAFE_INTEGER} then {text} else '\"' || {text} || '\"' end)"

    def json_object(self, members: list[tuple[str, str, bool]]) -> str:
        """Return SQL building a JSON object from (name, JSON text SQL, keep null) in the given order.

        A member whose value is NULL is written as ``null`` when kept, and left out otherwise.
        """
        import json

        parts = []
        for name, value, keep_null in members:
            key = literal(json.dumps(name, ensure_ascii=False) + ":")
            member = f"{key} || coalesce({value}, 'null')" if keep_null else f"{key} || {value}"
            parts.append(f"coalesce(',' || {member}, '')")
        if not parts:
            return "'{}'"
        return "('{' || substr(" + " || ".join(parts) + ", 2) || '}')"


class DuckDBDialect(Dialect):
    name = "duckdb"
    # DuckDB holds a transaction's deletes in memory: ten million of them do not fit in 256 MB,
    # while a table written anew spills as it goes
    rewrite_from_rows = 1_000_000

    _INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT"}
    _INTEGERS |= {"UINTEGER", "UBIGINT", "UHUGEINT", "BIGNUM", "VARINT"}

    def kind(self, type_name: str) -> tuple[Kind, str]:
        name = type_name.upper().strip()
        if name in ("VARCHAR", "TEXT", "STRING") or name.startswith("ENUM("):
            return Kind.TEXT, name
        if name in self._INTEGERS:
            return Kind.INTEGER, name
        if name.startswith("DECIMAL"):
            scale = re.search(r",\s*(\d+)\)", name)
            return (Kind.DECIMAL if scale and int(scale.group(1)) > 0 else Kind.INTEGER), name
        if name in ("DOUBLE", "FLOAT", "REAL"):
            return Kind.FLOAT, name
        if name == "BOOLEAN":
            return Kind.BOOLEAN, name
        if name == "DATE":
            return Kind.DATE, name
        if name in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"):
            return Kind.TIMESTAMPTZ, name
        if name.startswith("TIMESTAMP"):
            return Kind.TIMESTAMP, name
        if name in ("BLOB", "BIT"):
            return Kind.BINARY, name
        return Kind.OTHER, name

    def finite(self, sql: str) -> str:
        return f"isfinite({sql})"

    def text_to_double(self, sql: str) -> str:
        return f"try_cast({self.trim(sql)} as double)"

    def text_to_decimal(self, sql: str) -> str:
        return f"try_cast({self.trim(sql)} as decimal(38,10))"

    def text_to_integer(self, sql: str) -> str:
        trimmed = self.trim(sql)
        return (
            f"(case when regexp_full_match({trimmed}, '[+-]?[0-9]+') then try_cast({trimmed} as hugeint) end)"
        )

    def to_integer(self, sql: str) -> str:
        return f"cast({sql} as hugeint)"

    def text_to_date(self, sql: str) -> str:
        return f"try_cast({self.trim(sql)} as date)"

    def text_to_utc(self, sql: str) -> str:
        # the session's zone is pinned to UTC, so a text without an offset is read as UTC
        return f"timezone('UTC', try_cast({self.trim(sql)} as timestamptz))"

    def utc(self, sql: str) -> str:
        return f"timezone('UTC', {sql})"

    def date_text(self, sql: str) -> str:
        return f"strftime({sql}, '%Y-%m-%d')"

    def seconds_text(self, sql: str) -> str:
        return f"strftime({sql}, '%Y-%m-%dT%H:%M:%S')"

    def fraction(self, sql: str) -> tuple[str, str]:
        micros = f"(microsecond({sql}) % 1000000)"
        return micros, f"({micros} // 1000)"

    def exact_cast(self, sql: str, sqltype: str) -> str:
        return f"try_cast({sql} as {sqltype})"

    def json_scalar(self, sql: str) -> str:
        return f"cast(to_json({sql}) as varchar)"

    def sha256(self, sql: str) -> str:
        return f"sha256({sql})"

    def compact_row_hash(self, target: str, shape: str, values: Sequence[str], record: str) -> str:
        # DuckDB's 64-bit hash of the values, in order and null-aware: several times faster than an
        # md5 of the text, which is what decides the time of a plan over a large model
        return f"hash({', '.join([literal(shape), *values])})"

    def kept_hash(self, sql: str) -> str:
        return f"cast({sql} as varchar)"

    def compact_hash(self, sql: str) -> str:
        # the number, not its text: a join of ten million hashes spills half as much
        return f"try_cast({sql} as ubigint)"

    def legacy_row_hash(self, target: str, record: str) -> str | None:
        return self.md5(f"{literal(target)} || {record}")

    def trim(self, sql: str) -> str:
        return f"regexp_replace({sql}, {_SPACE}, '', 'g')"

    def remove_all(self, sql: str, pattern: str) -> str:
        return f"regexp_replace({sql}, {literal(pattern)}, '', 'g')"


class SnowflakeDialect(Dialect):
    name = "snowflake"

    def kind(self, type_name: str) -> tuple[Kind, str]:
        name = type_name.upper().strip()
        fixed = re.match(r"^FIXED\((\d+),(\d+)\)$", name)
        if fixed:
            sqltype = f"number({fixed.group(1)},{fixed.group(2)})"
            return (Kind.DECIMAL if int(fixed.group(2)) > 0 else Kind.INTEGER), sqltype
        simple = {
            "FIXED": Kind.INTEGER,
            "TEXT": Kind.TEXT,
            "REAL": Kind.FLOAT,
            "BOOLEAN": Kind.BOOLEAN,
            "DATE": Kind.DATE,
            "TIMESTAMP_NTZ": Kind.TIMESTAMP,
            "TIMESTAMP": Kind.TIMESTAMP,
            "TIMESTAMP_LTZ": Kind.TIMESTAMPTZ,
            "TIMESTAMP_TZ": Kind.TIMESTAMPTZ,
            "BINARY": Kind.BINARY,
        }
        return simple.get(name, Kind.OTHER), name

    def finite(self, sql: str) -> str:
        return f"({sql} not in ('NaN'::double, 'inf'::double, '-inf'::double))"

    def text_to_double(self, sql: str) -> str:
        return f"try_to_double({self.trim(sql)})"

    def text_to_decimal(self, sql: str) -> str:
        return f"try_to_decimal({self.trim(sql)}, 38, 10)"

    def text_to_integer(self, sql: str) -> str:
        trimmed = self.trim(sql)
        return f"(case when regexp_like({trimmed}, '[+-]?[0-9]+') then try_to_number({trimmed}, 38, 0) end)"

    def to_integer(self, sql: str) -> str:
        return f"cast({sql} as number(38,0))"

    def text_to_date(self, sql: str) -> str:
        return f"try_to_date({self.trim(sql)})"

    def text_to_utc(self, sql: str) -> str:
        return f"convert_timezone('UTC', try_to_timestamp_tz({self.trim(sql)}))::timestamp_ntz"

    def utc(self, sql: str) -> str:
        return f"convert_timezone('UTC', {sql})::timestamp_ntz"

    def date_text(self, sql: str) -> str:
        return f"to_char({sql}, 'YYYY-MM-DD')"

    def seconds_text(self, sql: str) -> str:
        return f"(to_char({sql}, 'YYYY-MM-DD') || 'T' || to_char({sql}, 'HH24:MI:SS'))"

    def fraction(self, sql: str) -> tuple[str, str]:
        nanos = f"date_part(nanosecond, {sql})"
        return f"floor({nanos} / 1000)", f"floor({nanos} / 1000000)"

    def json_scalar(self, sql: str) -> str:
        return f"to_json(to_variant({sql}))"

    def sha256(self, sql: str) -> str:
        return f"sha2({sql}, 256)"

    def trim(self, sql: str) -> str:
        return f"regexp_replace({sql}, {_SPACE}, '')"

    def remove_all(self, sql: str, pattern: str) -> str:
        # Snowflake's regexp_replace replaces every match unless told otherwise
        return f"regexp_replace({sql}, {literal(pattern)}, '')"
