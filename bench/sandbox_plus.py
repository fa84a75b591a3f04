"""The HubSpot sandbox plus what only the benchmarks need: single-record writes and an admission log.

drt writes one record a request, through HubSpot's single-object endpoints, which the sandbox
does not serve (syncback only uses the batch ones):
``POST /crm/v3/objects/{type}`` (201, or 409 "... already exists. Existing ID: N") and
``PATCH /crm/v3/objects/{type}/{id}[?idProperty=]`` (200, or 404). Each is the sandbox's batch
create or update with one input, so limits, validation and stats are the sandbox's own.
With ``SANDBOX_ADMISSIONS=FILE``, each rate-limit decision is logged as "time admitted waited":
when it was counted (``time.monotonic``), whether it was let through, and how long the request
had waited in the sandbox since its body was read (for the sandbox's lock, mostly).
Run as ``python -m sandbox_plus`` from bench/, with the sandbox's flags.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, TextIO

from syncback.sandbox import hubspot
from syncback.sandbox.hubspot import _LIST, _ONE, _error, _Rejected, _Response


class SandboxPlus(hubspot.HubSpotSandbox):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        path = os.environ.get("SANDBOX_ADMISSIONS")
        self._log: TextIO | None = open(path, "w", buffering=1) if path else None  # noqa: SIM115
        self._arrived = threading.local()

    def _handle(self, method: str, target: str, authorization: str | None, body: bytes) -> _Response:
        self._arrived.at = hubspot.time.monotonic()
        return super()._handle(method, target, authorization, body)

    def _admit(self, token: str) -> tuple[_Response | None, dict[str, str]]:
        limited, headers = super()._admit(token)
        if self._log is not None:
            now = hubspot.time.monotonic()
            self._log.write(f"{now:.6f} {int(limited is None)} {now - self._arrived.at:.6f}\n")
        return limited, headers

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> _Response:
        one, listing = _ONE.match(path), _LIST.match(path)
        if method == "POST" and listing:
            inputs = [{"properties": _properties(body)}]
            return _single(
                self._batch("create", self._object_type(listing.group(1)), query, {"inputs": inputs})
            )
        if method == "PATCH" and one:
            inputs = [{"id": hubspot.unquote(one.group(2)), "properties": _properties(body)}]
            return _single(self._batch("update", self._object_type(one.group(1)), query, {"inputs": inputs}))
        return super()._route(method, path, query, body)


def _properties(body: bytes) -> Any:
    try:
        return json.loads(body).get("properties", {})
    except (ValueError, AttributeError) as exc:
        raise _Rejected(_error(400, f"Invalid input JSON: {exc}", "VALIDATION_ERROR")) from exc


def _single(batch: _Response) -> _Response:
    """Return a one-input batch answer as the single-object endpoint gives it."""
    if batch.status < 300 and batch.status != 207:
        return _Response(batch.status, batch.body["results"][0])
    error = batch.body["errors"][0]
    status = 404 if error["category"] == "OBJECT_NOT_FOUND" else 400
    return _error(status, error["message"], error["category"])


if __name__ == "__main__":
    hubspot.HubSpotSandbox = SandboxPlus  # type: ignore[misc]
    raise SystemExit(hubspot.main())
