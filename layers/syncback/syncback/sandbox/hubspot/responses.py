"""What the sandbox answers: a response, a whole request refused, and HubSpot's error bodies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

_AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find "
    "more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
# HubSpot documents the 423 and the 5xx statuses, not their bodies: these are shaped like its other errors
_LOCKED = (
    "Records are locked by another write; locks last 2 seconds, retry after a delay of at least 2 seconds"
)
_SERVER_ERRORS = {
    502: (
        "BAD_GATEWAY",
        "Processing limits have been met. Pause your requests for a few seconds, then retry.",
    ),
    503: ("SERVICE_UNAVAILABLE", "The service is temporarily unavailable. Pause, then retry."),
    504: (
        "GATEWAY_TIMEOUT",
        "The request timed out upstream. Pause your requests for a few seconds, then retry.",
    ),
}


@dataclass
class _Response:
    status: int
    body: Any = None  # JSON value; None sends no body
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # close the socket without answering


class _Rejected(Exception):
    """The whole request fails with this response; nothing has been written."""

    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


def _error(status: int, message: str, category: str, **extra: Any) -> _Response:
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), "category": category}
    return _Response(status, {**body, **extra})


def _rate_limited(policy: str, message: str) -> _Response:
    body = {
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
    }
    return _Response(429, {**body, "policyName": policy, "requestId": str(uuid.uuid4())})
