"""The contract suites' view of the HubSpot sandbox (``syncback.sandbox.hubspot``, which the demo
runs too): contacts found by email, every value stored as text."""

from __future__ import annotations

from typing import Any

import requests

from syncback.sandbox.hubspot import Faults, HubSpotSandbox
from tests.fakes.contract import Fake

TOKEN = "contract-hubspot-token"


class HubSpotFake(Fake):
    name = "hubspot"
    identifier = "email"
    env = {"CONTRACT_HUBSPOT_TOKEN": TOKEN}
    by_hand = True

    def __init__(self) -> None:
        # a short window, so that an injected 429's "wait one interval" is short too
        self.sandbox = HubSpotSandbox(token=TOKEN, requests_per_window=None, window_seconds=0.2)
        self._faults = Faults()

    def __enter__(self) -> HubSpotFake:
        self.sandbox.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sandbox.stop()

    def destination(self) -> dict[str, Any]:
        return {
            "type": "hubspot",
            "object": "contacts",
            "id_property": "email",
            "token": "env:CONTRACT_HUBSPOT_TOKEN",
            "base_url": self.sandbox.url,
            "rate_limit": {"requests": 10_000, "per_seconds": 1},
            "timeout_s": 2,
        }

    def records(self) -> list[dict[str, Any]]:
        return [{"id": o["id"], **o["properties"]} for o in self.sandbox.objects("contacts")]

    def stored(self, field: str, value: Any) -> Any:
        # HubSpot stores text, clears with "", and keeps emails trimmed and in lower case
        text = "" if value is None else str(value)
        return text.strip().lower() if field == "email" else text

    def reject(self, values: set[str]) -> None:
        self._faults = Faults(
            **{**self._faults.__dict__, "reject_values": {v.strip().lower() for v in values}}
        )
        self.sandbox.set_faults(self._faults)

    def inject(self, rate_429: float, rate_5xx: float, rate_timeout: float, seed: int) -> None:
        self._faults = Faults(
            **{
                **self._faults.__dict__,
                "rate_429": rate_429,
                "rate_5xx": rate_5xx,
                "rate_timeout": rate_timeout,
                "timeout_seconds": 2.5,
                "seed": seed,
            }
        )
        self.sandbox.set_faults(self._faults)

    def created(self) -> int:
        return int(self.sandbox.stats()["created"])

    def injected(self) -> int:
        return sum(self.sandbox.stats()["injected"].values())

    def create_by_hand(self, email: str) -> str:
        response = requests.post(
            f"{self.sandbox.url}/crm/v3/objects/contacts/batch/create",
            json={"inputs": [{"properties": {"email": email, "firstname": "by hand"}}]},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["results"][0]["id"])

    def delete_by_hand(self, record_id: str) -> None:
        response = requests.post(
            f"{self.sandbox.url}/crm/v3/objects/contacts/batch/archive",
            json={"inputs": [{"id": record_id}]},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        assert response.status_code == 204, response.text

    def writes(self, request: requests.PreparedRequest) -> bool:
        return "/batch/" in (request.url or "")


FAKE = HubSpotFake
