"""What HubSpot accepts in a batch input: values cleaned as it stores them, the inputs it refuses, and why."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .responses import _error, _Rejected

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


@dataclass
class _Input:
    id_value: str | None
    trace: str | None
    properties: dict[str, str]  # "" clears the property
    problems: list[dict[str, Any]]  # property values that are not strings, numbers, booleans or null


def _normalize(prop: str, value: str) -> str:
    # HubSpot stores emails lowercased and matches them case-insensitively; domains behave the same
    return value.strip().lower() if prop in ("email", "domain") else value


def _fail_whole_batch(inputs: list[dict[str, Any]], fail_batch_values: set[str]) -> None:
    """Fail the request, as HubSpot's legacy batches did, when any input holds a fail_batch value."""
    bad = {v.lower() for v in fail_batch_values}
    if not bad:
        return
    for raw in inputs:
        props = raw.get("properties")
        for name, value in [("id", raw.get("id")), *(props.items() if isinstance(props, dict) else [])]:
            if value is not None and str(value).lower() in bad:
                message = f"Property values were not valid: {json.dumps([{'isValid': False, 'name': name}])}"
                errors = [{"message": f"{value} was not a valid value", "in": name}]
                raise _Rejected(_error(400, message, "VALIDATION_ERROR", errors=errors))


def _reject_duplicates(keys: list[str]) -> None:
    # HubSpot refuses a batch in which two inputs name the same record, writing none of it
    dupes = sorted(k for k, n in Counter(keys).items() if n > 1)
    if dupes:
        message = f"Duplicate IDs found in batch input: {dupes}. IDs must be unique"
        raise _Rejected(_error(400, message, "VALIDATION_ERROR"))


def _clean(raw: dict[str, Any], unique: str | None) -> _Input:
    """Return the input with its property values as HubSpot stores them: strings, "" for cleared."""
    raw_id, trace = raw.get("id"), raw.get("objectWriteTraceId")
    given = raw.get("properties", {})
    inp = _Input(
        None if raw_id is None or raw_id == "" else str(raw_id),
        None if trace is None else str(trace),
        {},
        [],
    )
    if not isinstance(given, dict):
        inp.problems.append({"name": "properties", "message": "properties must be an object"})
        return inp
    for name, value in given.items():
        if value is None or value == "":  # HubSpot clears with ""; null is taken to mean the same
            inp.properties[name] = ""
        elif isinstance(value, bool):
            inp.properties[name] = "true" if value else "false"
        elif isinstance(value, int | float):
            integral = isinstance(value, float) and value.is_integer()
            inp.properties[name] = str(int(value)) if integral else str(value)
        elif isinstance(value, str):
            inp.properties[name] = _normalize(name, value) if name == unique else value
        else:
            message = f"{json.dumps(value)[:100]} is not a string, number, boolean or null"
            inp.problems.append({"name": name, "message": message})
    return inp


def _invalid(
    object_type: str, inp: _Input, reject_values: set[str], known: set[str] | None = None
) -> dict[str, Any] | None:
    """Return the error item for an input HubSpot would refuse, or None. ``known``: the properties
    the object has (None: any name is taken as an existing property)."""
    missing = sorted(set(inp.properties) - known) if known is not None else []
    if missing:
        details = [
            {
                "isValid": False,
                "message": f'Property "{name}" does not exist',
                "error": "PROPERTY_DOESNT_EXIST",
                "name": name,
            }
            for name in missing
        ]
        return _item(
            "VALIDATION_ERROR", f"Property values were not valid: {json.dumps(details)}", inp, details
        )
    if inp.problems:
        details = [{"isValid": False, "error": "INVALID_PROPERTY_VALUE", **p} for p in inp.problems]
        return _item(
            "VALIDATION_ERROR", f"Property values were not valid: {json.dumps(details)}", inp, details
        )
    email = inp.properties.get("email")
    if object_type == "contacts" and email and not _EMAIL.match(email):
        detail = {
            "isValid": False,
            "message": f"Email address {email} is invalid",
            "error": "INVALID_EMAIL",
        }
        return _item(
            "VALIDATION_ERROR", f"Email address {email} is invalid", inp, [{**detail, "name": "email"}]
        )
    rejected = {v.lower() for v in reject_values}  # emails arrive lowercased
    for name, value in [("id", inp.id_value), *inp.properties.items()]:
        if value is not None and value.lower() in rejected:
            detail = {
                "isValid": False,
                "message": f"{value} was not a valid value",
                "error": "INVALID_OPTION",
            }
            message = f"Property values were not valid: {json.dumps([{**detail, 'name': name}])}"
            return _item("VALIDATION_ERROR", message, inp, [{**detail, "name": name}])
    return None


def _item(
    category: str, message: str, inp: _Input, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Return one per-record error as HubSpot lists it in a 207's ``errors``."""
    context: dict[str, list[str]] = {}
    if inp.id_value is not None:
        context["id"] = [inp.id_value]
    if inp.trace is not None:
        context["objectWriteTraceId"] = [inp.trace]
    details = details or [{"message": message, "error": category}]
    sub = details[0].get("error")
    item: dict[str, Any] = {
        "status": "error",
        "category": category,
        "subCategory": sub,
        "message": message,
        "context": context,
        "errors": [
            {"message": d.get("message", message), "code": d.get("error"), "in": d.get("name")}
            for d in details
        ],
    }
    if inp.trace is not None:
        item["objectWriteTraceId"] = inp.trace
    return item
