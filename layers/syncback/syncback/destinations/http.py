"""What every HTTP destination reads the same way: Retry-After, and JSON bodies that may not be."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import requests

from syncback.destinations.base import Change

# shorter values are left alone: redacting "1" or "no" would garble every message
_MIN_REDACTED = 3


def retry_after(response: requests.Response, clock: Callable[[], float] = time.time) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP dates are always GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - clock())


def json_body(response: requests.Response) -> Any:
    """Return the response's JSON, or None when it has none (an empty or non-JSON body)."""
    try:
        return response.json()
    except ValueError:
        return None


def redact(text: str, changes: Sequence[Change], secrets: Sequence[str] = ()) -> str:
    """Return ``text`` with every value of ``changes`` (and secret) it holds replaced by ``…``."""
    if not text:
        return text
    values = {form for c in changes for value in _leaves(c.record) for form in _forms(value)}
    values.update(s for s in secrets if s)
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, "…")
    return text


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, bool):
        yield value


def _forms(value: Any) -> Iterator[str]:
    text = str(value)
    if len(text) >= _MIN_REDACTED:
        yield text
        if isinstance(value, str):
            yield json.dumps(value)[1:-1]  # as a receiver may echo it: \u-escaped
