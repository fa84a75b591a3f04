"""Who may call the CRM API and how often: bearer tokens, HubSpot's rolling window and daily limit."""

from __future__ import annotations

import time
from collections import deque

from .responses import _AUTH_MESSAGE, _error, _rate_limited, _Response

FORBIDDEN_TOKEN = "forbidden-token"  # any sandbox answers this token with 403 MISSING_SCOPES


def _bearer(authorization: str | None) -> str:
    """Return the bearer token of an Authorization header, or "" when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _refuse(token: str, accepted: str | None) -> _Response | None:
    """Return the 401 or 403 HubSpot gives a token (``accepted`` None takes any), or None to let it in."""
    if not token or (accepted is not None and token not in (accepted, FORBIDDEN_TOKEN)):
        return _error(401, _AUTH_MESSAGE, "INVALID_AUTHENTICATION")
    if token == FORBIDDEN_TOKEN:
        return _error(
            403,
            "This app hasn't been granted all required scopes to make this call.",
            "MISSING_SCOPES",
            errors=[{"message": "One or more of the following scopes are required.", "context": {}}],
        )
    return None


class _RateLimits:
    """A rolling window of requests per token and a daily count; used with the sandbox lock held."""

    def __init__(self, per_window: int | None, window_seconds: float, daily_limit: int | None) -> None:
        self._per_window, self._window_seconds, self._daily_limit = per_window, window_seconds, daily_limit
        self._windows: dict[str, deque[float]] = {}
        self._daily_used = 0

    def clear(self) -> None:
        self._windows.clear()
        self._daily_used = 0

    def admit(self, token: str) -> tuple[_Response | None, dict[str, str]]:
        """Count the request against the limits; return a 429 if it is over one, and the limit headers."""
        headers: dict[str, str] = {}
        limited: _Response | None = None
        if self._daily_limit is not None and self._daily_used >= self._daily_limit:
            limited = _rate_limited("DAILY", "You have reached your daily limit.")
        window = self._windows.setdefault(token, deque())
        if self._per_window is not None:
            now = time.monotonic()
            while window and window[0] <= now - self._window_seconds:
                window.popleft()
            if limited is None and len(window) >= self._per_window:
                limited = _rate_limited(
                    "TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit."
                )
            # HubSpot does not say whether rejected calls use up the window; here they do not, so a client
            # that backs off after a 429 gets through as soon as the oldest accepted call leaves the window
            if limited is None:
                window.append(now)
            headers["X-HubSpot-RateLimit-Max"] = str(self._per_window)
            headers["X-HubSpot-RateLimit-Remaining"] = str(max(0, self._per_window - len(window)))
            headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = str(int(self._window_seconds * 1000))
        if limited is None:
            self._daily_used += 1
        if self._daily_limit is not None:
            headers["X-HubSpot-RateLimit-Daily"] = str(self._daily_limit)
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(0, self._daily_limit - self._daily_used))
        return limited, headers
