"""The mapping as SQL: model row → destination record, computed inside the warehouse.

Every mapped field becomes an SQL expression: the column (or a constant), its transforms in
order, and its JSON form. The warehouse builds each record as JSON text (fields in name order, so
the text does not depend on the order the spec lists them), says why a row is invalid (the first
field, in name order, whose value a transform cannot convert, naming the field and the column,
never the value), and gives the normalised identifier the identity check compares. Rows never
pass through Python to be mapped, so a plan's speed and memory do not depend on Python.

Transforms (a name or a list, applied in order; nulls stay null):

    string    the text form: booleans true/false, whole doubles without ".0", dates ISO 8601
    lower, upper, trim (white space: spaces, tabs, line breaks), sha256 (hex of the text form)
    integer   whole numbers; text of digits, or of a whole decimal ("12.0"); not booleans
    float     a finite double; from numbers or text
    boolean   true/false, yes/no, y/n, t/f, 1/0 (text, any case) and the numbers 1 and 0
    iso_date  dates as YYYY-MM-DD, timestamps as UTC YYYY-MM-DDTHH:MM:SS[.mmm]Z; text parsed as one

Audience identifiers (the fields a destination's ``Kind.hashed`` names) are, after their
transforms, normalised and hashed here, in the warehouse: SHA-256 as lower-case hex of the
normalised text, null where nothing is left of it. Every record, identity and reason a plan writes
outside the warehouse holds the hash, never the address. Normalisers (``NORMALISERS``):

    email     every white-space character removed, lower case
    phone     digits only, leading zeros dropped; the country code is kept as the model gives it,
              so the model must give it (+44 20 7946 0000 → 442079460000, never 02079460000)
    text      trimmed, lower case (external ids)
    name      punctuation removed, trimmed, lower case (Meta's first and last names; é is kept)
    city      punctuation and white space removed, lower case (Meta's city: "St. Louis" → stlouis)
    gmail_email  as email, and the dots before the @ of a gmail.com or googlemail.com address
              removed (Google's rule)
    e164_phone   "+" and the digits as phone gives them (Google's E.164 form: +44 20 7946 0000 and
              0044 20 7946 0000 → +442079460000; the model gives the country code)

JSON forms: integers beyond 2^53 and decimals a double would change are sent as exact strings;
NaN and infinity make the row invalid; timestamps without a zone are taken as UTC.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from syncback.errors import Problem
from syncback.spec import FieldMapping, SyncSpec
from syncback.warehouses.dialect import Dialect, Kind, Typed, literal

_ARTICLE = {
    Kind.TEXT: "a text",
    Kind.INTEGER: "an integer",
    Kind.DECIMAL: "a decimal",
    Kind.FLOAT: "a float",
    Kind.BOOLEAN: "a boolean",
    Kind.DATE: "a date",
    Kind.TIMESTAMP: "a timestamp",
    Kind.TIMESTAMPTZ: "a timestamp",
    Kind.OTHER: "a value of another type",
    Kind.BINARY: "binary",
}
_TRUE = "('true', 't', 'yes', 'y', '1')"
_FALSE = "('false', 'f', 'no', 'n', '0')"
_NUMBERS = (Kind.INTEGER, Kind.DECIMAL, Kind.FLOAT)

#: where the model's SQL goes in the mapping's query
_MODEL = "\x00model\x00"
_ONLY = "\x00only\x00"
#: raise when the JSON a value becomes changes, so that every record is sent again once
ENCODING = 1

#: (the converted value, why it failed when a non-null value came out null; None: it cannot fail)
Step = tuple[Typed, str | None]


def _null(kind: Kind) -> Typed:
    return Typed("null", kind)


def _integer(v: Typed, d: Dialect) -> Step:
    if v.kind is Kind.INTEGER:
        return v, None
    if v.kind is Kind.DECIMAL:
        return Typed(f"(case when {v.sql} = trunc({v.sql}) then {d.to_integer(v.sql)} end)", Kind.INTEGER), (
            "is not a whole number"
        )
    if v.kind is Kind.FLOAT:
        whole = f"{d.finite(v.sql)} and {v.sql} = trunc({v.sql}) and abs({v.sql}) < 1e38"
        return Typed(
            f"(case when {whole} then {d.to_integer(v.sql)} end)", Kind.INTEGER
        ), "is not a whole number"
    if v.kind is Kind.TEXT:
        decimal = d.text_to_decimal(v.sql)
        whole = f"(case when {decimal} = trunc({decimal}) then {d.to_integer(decimal)} end)"
        return Typed(f"coalesce({d.text_to_integer(v.sql)}, {whole})", Kind.INTEGER), (
            "is text that is not an integer"
        )
    return _null(Kind.INTEGER), f"is {_ARTICLE[v.kind]}, not an integer"


def _float(v: Typed, d: Dialect) -> Step:
    if v.kind in _NUMBERS:
        number, reason = d.to_double(v.sql), "is NaN or infinite, which no destination accepts"
    elif v.kind is Kind.TEXT:
        number, reason = d.text_to_double(v.sql), "is text that is not a finite number"
    else:
        return _null(Kind.FLOAT), f"is {_ARTICLE[v.kind]}, not a number"
    return Typed(f"(case when {d.finite(number)} then {number} end)", Kind.FLOAT), reason


def _boolean(v: Typed, d: Dialect) -> Step:
    reason = "is not a boolean (true/false, yes/no, 1/0)"
    if v.kind is Kind.BOOLEAN:
        return v, None
    if v.kind in _NUMBERS:
        return Typed(
            f"(case when {v.sql} = 1 then true when {v.sql} = 0 then false end)", Kind.BOOLEAN
        ), reason
    if v.kind is Kind.TEXT:
        word = f"lower({d.trim(v.sql)})"
        sql = f"(case when {word} in {_TRUE} then true when {word} in {_FALSE} then false end)"
        return Typed(sql, Kind.BOOLEAN), reason
    return _null(Kind.BOOLEAN), f"is {_ARTICLE[v.kind]}, not a boolean"


def _iso_date(v: Typed, d: Dialect) -> Step:
    if v.kind in (Kind.DATE, Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return Typed(d.iso(v), Kind.TEXT), None
    if v.kind is Kind.TEXT:
        moment = d.iso(Typed(d.text_to_utc(v.sql), Kind.TIMESTAMP))
        day = d.iso(Typed(d.text_to_date(v.sql), Kind.DATE))
        sql = f"(case when length({d.trim(v.sql)}) > 10 then {moment} else {day} end)"
        return Typed(sql, Kind.TEXT), "is text that is not an ISO 8601 date"
    return _null(Kind.TEXT), f"is {_ARTICLE[v.kind]}, not a date"


TRANSFORMS: dict[str, Callable[[Typed, Dialect], Step]] = {
    "string": lambda v, d: (Typed(d.text(v), Kind.TEXT), None),
    "lower": lambda v, d: (Typed(f"lower({d.text(v)})", Kind.TEXT), None),
    "upper": lambda v, d: (Typed(f"upper({d.text(v)})", Kind.TEXT), None),
    "trim": lambda v, d: (Typed(d.trim(d.text(v)), Kind.TEXT), None),
    "sha256": lambda v, d: (Typed(d.sha256(d.text(v)), Kind.TEXT), None),
    "integer": _integer,
    "float": _float,
    "boolean": _boolean,
    "iso_date": _iso_date,
}

#: text SQL → the SQL of it normalised the way an audience destination compares it, before hashing;
#: one table for every audience destination (a destination names its normalisers in ``Kind.hashed``)
NORMALISERS: dict[str, Callable[[str, Dialect], str]] = {
    "email": lambda sql, d: f"lower({d.remove_all(sql, '[[:space:]]+')})",
    "phone": lambda sql, d: f"ltrim({d.remove_all(sql, '[^0-9]+')}, '0')",
    "text": lambda sql, d: f"lower({d.trim(sql)})",
    # Meta: first and last names lower case without punctuation (letters beyond ASCII kept)
    "name": lambda sql, d: f"lower({d.trim(d.remove_all(sql, '[[:punct:]]+'))})",
    # Meta: a city lower case without punctuation or white space
    "city": lambda sql, d: f"lower({d.remove_all(sql, '[[:punct:][:space:]]+')})",
    # Google: e-mail as "email", and no dots before the @ of a gmail.com or googlemail.com address
    "gmail_email": lambda sql, d: _without_gmail_dots(NORMALISERS["email"](sql, d)),
    # Google: E.164, "+" and the digits, leading zeros dropped as "phone" does (0044… → +44…)
    "e164_phone": lambda sql, d: (
        f"(case when {NORMALISERS['phone'](sql, d)} = '' then '' else '+' || {NORMALISERS['phone'](sql, d)} end)"
    ),
}


def _without_gmail_dots(email: str) -> str:
    cases = " ".join(
        f"when {email} like '%@{domain}' then "
        f"replace(left({email}, length({email}) - {len(domain) + 1}), '.', '') || '@{domain}'"
        for domain in ("gmail.com", "googlemail.com")
    )
    return f"(case {cases} else {email} end)"


def hashed(value: Typed, normaliser: str, d: Dialect) -> Typed:
    """Return the SHA-256 hex of ``value`` normalised by ``normaliser``; null if nothing is left."""
    normalised = NORMALISERS[normaliser](d.text(value), d)
    return Typed(d.sha256(f"nullif({normalised}, '')"), Kind.TEXT)


# ---- the model's columns ------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A model column as the warehouse described it."""

    name: str
    kind: Kind
    sqltype: str


def resolve(name: str, described: Sequence[Column]) -> Column | None:
    """Return the described column ``name`` refers to: the same name, else the one equal but for case."""
    exact = [c for c in described if c.name == name]
    if exact:
        return exact[0]
    folded = [c for c in described if c.name.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def describe(described: Sequence[tuple[str, str]], dialect: Dialect) -> list[Column]:
    """Return the model's columns with their kinds."""
    return [Column(name, *dialect.kind(type_name)) for name, type_name in described]


def model_problems(sync: SyncSpec, described: Sequence[Column]) -> list[Problem]:
    """Return a problem for the primary key and each mapped column the model lacks or cannot send."""
    have = ", ".join(sorted(c.name for c in described))
    file = f"syncs/{sync.name}.yaml"
    problems = []
    if resolve(sync.primary_key, described) is None:
        problems.append(
            Problem(file, "primary_key", f"the model has no column {sync.primary_key} (it has: {have})")
        )
    for field_name, entry in sorted(sync.mapping.items()):
        if entry.column is None:
            continue
        column = resolve(entry.column, described)
        if column is None:
            problems.append(
                Problem(
                    file,
                    f"mapping.{field_name}",
                    f"the model has no column {entry.column}; fix the name or add it to the model (it has: {have})",
                )
            )
        elif column.kind is Kind.BINARY:
            problems.append(
                Problem(
                    file,
                    f"mapping.{field_name}",
                    f"column {column.name} is {column.sqltype}, which has no JSON form; "
                    "convert it in the model (to hex or base64 text)",
                )
            )
    return problems


# ---- the mapping as a query -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str
    source: str  # "column X" or "constant": named in reasons
    start: Typed
    transforms: list[str]
    keep_null: bool


class MappingQuery:
    """The SQL that turns the model's rows into (key, record, invalid reason, identity) rows.

    ``identifiers`` are the fields that name a record in the destination: each must be non-empty,
    and ``sb_ident`` holds them normalised the way the destination compares them (trimmed, lower
    case), joined, so that two rows the destination would take for one record collide in SQL.
    ``hashed`` ({field: normaliser}) are the fields normalised and hashed after their transforms:
    the record and ``sb_ident`` hold their hashes, so two rows whose addresses normalise equal collide.
    """

    def __init__(
        self,
        sync: SyncSpec,
        described: Sequence[Column],
        dialect: Dialect,
        identifiers: Sequence[str],
        hashed: Mapping[str, str] | None = None,
    ) -> None:
        self.dialect = dialect
        key = resolve(sync.primary_key, described)
        if key is None:  # validated before; a model that changed since is a ModelError upstream
            raise ValueError(f"no column {sync.primary_key}")
        self.key = Typed(dialect.quote(key.name), key.kind, key.sqltype)
        self.fields = [self._field(name, entry, described) for name, entry in sorted(sync.mapping.items())]
        self.identifiers = sorted(identifiers)
        self.hashed = dict(hashed or {})
        unknown = sorted(set(self.hashed.values()) - set(NORMALISERS))
        if unknown:
            raise ValueError(f"no normaliser {unknown[0]!r} (there are: {', '.join(sorted(NORMALISERS))})")
        # each model column read once, under an alias of ours: a model column may be called anything
        self.columns = {
            sql: f"c{j}"
            for j, sql in enumerate(sorted({f.start.sql for f in self.fields if f.source != "constant"}))
        }
        self._query, self.values = self._layers()

    def _field(self, name: str, entry: FieldMapping, described: Sequence[Column]) -> _Field:
        if entry.column is not None:
            column = resolve(entry.column, described)
            assert column is not None, f"unresolved column {entry.column}"
            start = Typed(self.dialect.quote(column.name), column.kind, column.sqltype)
            source = f"column {entry.column}"
        else:
            start, source = _constant(entry.value, self.dialect), "constant"
        return _Field(name, source, start, list(entry.transforms), entry.on_null == "send")

    def _layers(self) -> tuple[str, list[Typed]]:
        """Return the mapping's query over ``_MODEL`` (the model's place) and its output columns."""
        d = self.dialect
        # a newline before the closing parenthesis: a model ending in a -- comment cannot swallow it
        columns = ", ".join(
            [f"{d.text(self.key)} as sb_key", *(f"{c} as {a}" for c, a in self.columns.items())]
        )
        sql = f"select {columns} from (\n{_MODEL}\n) as m{_ONLY}"
        values = [
            f.start
            if f.source == "constant"
            else Typed(self.columns[f.start.sql], f.start.kind, f.start.sqltype)
            for f in self.fields
        ]
        reasons: list[str | None] = [None] * len(self.fields)
        for depth in range(max((len(f.transforms) for f in self.fields), default=0)):
            outputs = ["sb_key"]
            for i, f in enumerate(self.fields):
                if depth < len(f.transforms):
                    new, failure = TRANSFORMS[f.transforms[depth]](values[i], d)
                    if failure is not None:
                        why = literal(failure)
                        check = f"case when {values[i].sql} is not null and {new.sql} is null then {why} end"
                        reasons[i] = check if reasons[i] is None else f"coalesce({reasons[i]}, {check})"
                    values[i] = Typed(new.sql, new.kind, new.sqltype)
                outputs.append(f"{values[i].sql} as v{i}")
                if reasons[i] is not None:
                    outputs.append(f"{reasons[i]} as r{i}")
            sql = f"select {', '.join(outputs)} from ({sql}) as l{depth}"
            values = [Typed(f"v{i}", v.kind, v.sqltype) for i, v in enumerate(values)]
            reasons = [None if r is None else f"r{i}" for i, r in enumerate(reasons)]
        values = [
            hashed(v, self.hashed[f.name], d) if f.name in self.hashed else v
            for f, v in zip(self.fields, values, strict=True)
        ]
        columns = ", ".join(f"{v.sql} as v{i}" for i, v in enumerate(values))
        sql = (
            f"select sb_key, {columns}, {self._invalid(values, reasons)} as sb_invalid, "
            f"{self._identity(values)} as sb_ident from ({sql}) as mapped"
        )
        return sql, [Typed(f"v{i}", v.kind, v.sqltype) for i, v in enumerate(values)]

    def select(self, model_sql: str, keys: str | None = None) -> str:
        """Return a query of ``sb_key, v0…, sb_invalid, sb_ident`` over ``model_sql``'s rows: each
        field's value, mapped, in name order (``record`` and ``row_hash`` read them).

        ``keys``: a query of the keys (as text) whose rows to map; the others are dropped as they
        are read, before any transform.
        """
        only = "" if keys is None else f" where {self.dialect.text(self.key)} in ({keys})"
        return self._query.replace(_MODEL, model_sql).replace(_ONLY, only)

    def record(self) -> str:
        """Return SQL of the record as JSON text, over the ``v0``… columns ``select`` yields."""
        members = [
            (f.name, self.dialect.json(v), f.keep_null) for f, v in zip(self.fields, self.values, strict=True)
        ]
        return self.dialect.json_object(members)

    def row_hash(self, target: str, compact: bool = False) -> str:
        """Return SQL of the row's hash, over the ``v0``… columns: equal hashes, equal records.

        The hash covers the target and the record's shape (field names, kinds, whether a null is
        sent), so a record written elsewhere or encoded differently is never taken as unchanged.
        ``compact``: in the form ``Dialect.compact_hash`` gives a kept hash, to compare with it.
        """
        fields = [[f.name, v.kind.value, f.keep_null] for f, v in zip(self.fields, self.values, strict=True)]
        shape = json.dumps([ENCODING, target, fields])
        digest = hashlib.md5(shape.encode()).hexdigest()[:16]
        hashed = self.dialect.compact_row_hash if compact else self.dialect.row_hash
        return hashed(target, digest, [self._canonical(v) for v in self.values], self.record())

    def _canonical(self, value: Typed) -> str:
        """Return a value in one type per kind, so that a column whose type widens (an integer
        becoming a bigint, a float a double) hashes as before when its JSON is the same."""
        if value.kind is Kind.INTEGER:
            return self.dialect.varchar(value.sql)
        if value.kind is Kind.FLOAT:
            return self.dialect.to_double(value.sql)
        return value.sql

    def _invalid(self, values: list[Typed], reasons: list[str | None]) -> str:
        d = self.dialect
        checks = []
        for f, value, reason in zip(self.fields, values, reasons, strict=True):
            prefix = literal(f"field {f.name} ({f.source}): value ")
            if reason is not None:
                checks.append(f"{prefix} || {reason}")
            if value.kind is Kind.FLOAT:
                nan = literal("is NaN or infinite, which no destination accepts")
                checks.append(
                    f"case when {value.sql} is not null and not {d.finite(value.sql)} then {prefix} || {nan} end"
                )
        for name in self.identifiers:
            value = values[[f.name for f in self.fields].index(name)]
            empty = literal(f"field {name} identifies the record in the destination and is empty")
            checks.append(f"case when coalesce({self._normalised(value)}, '') = '' then {empty} end")
        if not checks:
            return "cast(null as varchar)"
        return checks[0] if len(checks) == 1 else f"coalesce({', '.join(checks)})"

    def _normalised(self, value: Typed) -> str:
        return f"lower({self.dialect.trim(self.dialect.text(value))})"

    def _identity(self, values: list[Typed]) -> str:
        if not self.identifiers:
            return "cast(null as varchar)"
        names = [f.name for f in self.fields]
        parts = [self._normalised(values[names.index(n)]) for n in self.identifiers]
        return parts[0] if len(parts) == 1 else " || '|' || ".join(parts)


def _constant(value: object, d: Dialect) -> Typed:
    if value is None:
        return Typed("cast(null as varchar)", Kind.TEXT)
    if isinstance(value, bool):
        return Typed("true" if value else "false", Kind.BOOLEAN)
    if isinstance(value, int):
        return Typed(d.to_integer(str(value)), Kind.INTEGER)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a constant must be a finite number")
        return Typed(f"cast({value!r} as double)", Kind.FLOAT)
    return Typed(literal(str(value)), Kind.TEXT)
