"""Row → destination record: renames, constants, transforms and the per-field null policy.

A value that cannot be converted makes its record invalid: ``Mapper.map`` raises ``InvalidValue``
with a reason that names the field and the column, never the value itself (record values stay
out of logs and run history). Values come out JSON-ready: no NaN or infinity, no Decimal, no
integers a JSON reader would round.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from syncback.spec import FieldMapping

# Integers beyond this are sent as strings: JSON readers in JavaScript round them otherwise.
MAX_SAFE_INTEGER = 2**53 - 1


class InvalidValue(ValueError):
    """A value the mapping cannot convert; the message is the reason shown to operators."""


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime | dt.date):
        return _iso(value)
    return str(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidValue("is a boolean, not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        if not math.isfinite(value) or value != int(value):
            raise InvalidValue("is not a whole number")
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                return _integer(Decimal(value.strip()))
            except ArithmeticError:
                raise InvalidValue("is text that is not an integer") from None
    raise InvalidValue(f"is a {type(value).__name__}, not an integer")


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidValue("is a boolean, not a number")
    try:
        result = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InvalidValue(f"is a {type(value).__name__} that is not a number") from None
    if not math.isfinite(result):
        raise InvalidValue("is NaN or infinite, which no destination accepts")
    return result


_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
    raise InvalidValue("is not a boolean (true/false, yes/no, 1/0)")


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        text: str = value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
        return text + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        text = value.strip()
        try:
            return (
                _iso(dt.datetime.fromisoformat(text))
                if len(text) > 10
                else dt.date.fromisoformat(text).isoformat()
            )
        except ValueError:
            raise InvalidValue("is text that is not an ISO 8601 date") from None
    raise InvalidValue(f"is a {type(value).__name__}, not a date")


def _sha256(value: Any) -> str:
    return hashlib.sha256(_text(value).encode("utf-8")).hexdigest()


TRANSFORMS: dict[str, Callable[[Any], Any]] = {
    "lower": lambda v: _text(v).lower(),
    "upper": lambda v: _text(v).upper(),
    "trim": lambda v: _text(v).strip(),
    "string": _text,
    "integer": _integer,
    "float": _float,
    "boolean": _boolean,
    "iso_date": _iso,
    "sha256": _sha256,
}


def json_ready(value: Any) -> Any:
    """Return ``value`` as something every JSON reader takes exactly; raise InvalidValue if none."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue("is NaN or infinite, which no destination accepts")
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidValue("is NaN or infinite, which no destination accepts")
        if value == value.to_integral_value():
            return json_ready(int(value))
        as_float = float(value)
        # keep the exact digits when a float would change them
        return as_float if Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, dt.datetime | dt.date):
        return _iso(value)
    if isinstance(value, dt.time | uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    raise InvalidValue(f"is a {type(value).__name__}, which cannot be sent as JSON")


class Mapper:
    """Maps rows (tuples in ``columns`` order) onto destination records, as the spec's mapping says."""

    def __init__(
        self, mapping: dict[str, FieldMapping], columns: Sequence[str], required: Sequence[str] = ()
    ) -> None:
        index = {name.lower(): i for i, name in enumerate(columns)}
        self._fields: list[tuple[str, int | None, Any, list[Callable[[Any], Any]], bool, str]] = []
        for name, entry in mapping.items():
            position = None if entry.column is None else index[entry.column.lower()]
            chain = [TRANSFORMS[t] for t in entry.transforms]
            source = f"column {entry.column}" if entry.column else "constant"
            self._fields.append((name, position, entry.value, chain, entry.on_null == "skip", source))
        self._required = list(required)

    def map(self, row: Sequence[Any]) -> dict[str, Any]:
        """Return the destination record for ``row``; raise InvalidValue with the reason."""
        record: dict[str, Any] = {}
        for name, position, constant, chain, skip_null, source in self._fields:
            value = constant if position is None else row[position]
            try:
                if value is not None:
                    for transform in chain:
                        value = transform(value)
                value = json_ready(value)
            except InvalidValue as exc:
                raise InvalidValue(f"field {name} ({source}): value {exc}") from None
            if value is None and skip_null:
                continue
            record[name] = value
        for name in self._required:
            if record.get(name) in (None, ""):
                raise InvalidValue(f"field {name} identifies the record in the destination and is empty")
        return record
