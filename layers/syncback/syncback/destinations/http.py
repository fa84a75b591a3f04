"""What every HTTP destination does the same way: sending (every failure to get an answer classified
here, and nowhere else), Retry-After and announced rate-limit resets, strict JSON out, JSON bodies
in that may not be, and naming a URL safely."""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from syncback.destinations.base import Change
from syncback.errors import DestinationUnavailable, RateLimited, SystemicError

# shorter values are left alone: redacting "1" or "no" would garble every message
_MIN_REDACTED = 3


def send(
    session: requests.Session, method: str, url: str, who: str, field: str, timeout: float, **kwargs: Any
) -> requests.Response:
    """Return the destination's answer to one request; raise DestinationUnavailable when there is
    none (a timeout, a refused or reset connection, an answer cut off mid-body) and SystemicError
    when the URL itself is wrong. ``who`` names the destination in messages (never a full URL)."""
    try:
        return session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.InvalidSchema,
        requests.exceptions.MissingSchema,
    ) as exc:
        raise SystemicError(f"{who}: the address is not usable ({type(exc).__name__})", field) from exc
    except requests.Timeout as exc:
        raise DestinationUnavailable(f"{who}: no answer from {where(url)} within {timeout:g}s") from exc
    except requests.RequestException as exc:
        # refused, reset, or cut off while the answer was coming (ChunkedEncodingError, ...)
        raise DestinationUnavailable(f"{who}: no answer from {where(url)} ({type(exc).__name__})") from exc


def where(url: str) -> str:
    """Return the scheme, host and port of ``url``: enough to find the server, nothing after it."""
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme, 0)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def url_label(url: str) -> str:
    """Return ``url`` safe to log, key a budget or put in a message: scheme and host, the rest
    hashed (a webhook's path or query may hold a token)."""
    parts = urlsplit(url)
    rest = parts.path + ("?" + parts.query if parts.query else "")
    digest = hashlib.sha256(rest.encode()).hexdigest()[:8] if rest.strip("/") else ""
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" + (f"/#{digest}" if digest else "")


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


class AnnouncedReset:
    """Where a destination answers ``X-RateLimit-Reset`` (epoch seconds) and ``X-RateLimit-Remaining``
    (Braze, Intercom): after a 429, or an answer with none remaining, no request is sent before the
    reset; sending would only earn a 429. The deliverers of a sync share the client, so this too."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._not_before = 0.0
        self._lock = threading.Lock()

    def hold(self, what: str) -> None:
        """Raise ``RateLimited`` (not sent: it spends no attempt) while the reset is ahead."""
        with self._lock:
            wait = self._not_before - self._clock()
        if wait > 0:
            raise RateLimited(f"{what}: no requests remain until the rate limit resets", wait, sent=False)

    def note(self, response: requests.Response) -> None:
        """Remember the reset of an answer that says none remain (or a 429)."""
        reset = self.reset(response)
        remaining = response.headers.get("X-RateLimit-Remaining", "").strip()
        if reset is not None and (response.status_code == 429 or remaining == "0"):
            with self._lock:
                self._not_before = max(self._not_before, reset)

    def wait(self, response: requests.Response) -> float | None:
        """Return the seconds until an answer's reset, or None when it names none."""
        reset = self.reset(response)
        return None if reset is None else max(0.0, reset - self._clock())

    @staticmethod
    def reset(response: requests.Response) -> float | None:
        """Return an answer's ``X-RateLimit-Reset`` (epoch seconds), or None."""
        try:
            value = float(response.headers.get("X-RateLimit-Reset", ""))
        except ValueError:
            return None
        return value if math.isfinite(value) and value > 0 else None


def strict_json(value: Any) -> bytes:
    """Return ``value`` as compact UTF-8 JSON; raise ValueError for what JSON cannot carry (NaN,
    infinity, a lone surrogate, a type it has no form for: the mapping should let none through)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except TypeError as exc:
        raise ValueError(type(exc).__name__) from exc
    return text.encode("utf-8")  # a lone surrogate fails here, as a ValueError


def not_json_reason(change: Change, otherwise: str = "a field") -> str:
    """Return why a change's record cannot be sent as JSON, naming its fields at fault."""
    bad = []
    for name, value in change.record.items():
        try:
            strict_json(value)
        except ValueError:
            bad.append(name)
    fields = ", ".join(bad) or otherwise
    return f"not valid JSON: {fields} holds NaN, infinity, a lone surrogate or a type JSON cannot carry"


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
