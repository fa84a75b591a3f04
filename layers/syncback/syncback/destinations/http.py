"""What every HTTP destination reads the same way: Retry-After, and JSON bodies that may not be."""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Callable
from typing import Any

import requests


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
