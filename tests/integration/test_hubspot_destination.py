"""The HubSpot client against the sandbox: how every answer HubSpot documents is classified."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from syncback.delivery import Delivery, RetryPolicy
from syncback.destinations.base import Change
from syncback.destinations.hubspot import HubSpotDestinationConfig
from syncback.destinations.hubspot.client import HubSpotDestination
from syncback.destinations.registry import Mode
from syncback.errors import DestinationAuthError, DestinationUnavailable, RateLimited, RequestRejected
from syncback.sandbox.hubspot import Faults, HubSpotSandbox

NO_WAIT = RetryPolicy(attempts=1)


@pytest.fixture
def sandbox() -> Iterator[HubSpotSandbox]:
    with HubSpotSandbox(token="t", requests_per_window=None) as server:
        yield server


def client(
    sandbox: HubSpotSandbox, mode: Mode = "upsert", token: str = "t", timeout_s: float = 5, **config: str
) -> HubSpotDestination:
    settings = HubSpotDestinationConfig(
        type="hubspot",
        object="contacts",
        id_property="email",
        token="env:X",
        base_url=sandbox.url,
        timeout_s=timeout_s,
        **config,
    )
    return HubSpotDestination(settings, token, mode)


def contacts(*numbers: int) -> list[Change]:
    return [
        Change(str(n), "upsert", f"h{n}", {"email": f"c{n}@example.com", "firstname": f"N{n}"})
        for n in numbers
    ]


def test_upsert_creates_then_updates_and_returns_hubspot_ids(sandbox: HubSpotSandbox) -> None:
    hubspot = client(sandbox)
    first = hubspot.write(contacts(1, 2))
    second = hubspot.write([Change("1", "upsert", "h", {"email": "C1@Example.com", "firstname": "New"})])
    assert [o.status for o in first] == ["delivered", "delivered"] and first[0].destination_id
    assert second[0].destination_id == first[0].destination_id
    assert {o["properties"]["firstname"] for o in sandbox.objects("contacts")} == {"New", "N2"}


def test_a_207_rejects_only_the_failing_records_with_hubspots_reason(sandbox: HubSpotSandbox) -> None:
    sandbox.set_faults(Faults(reject_values={"c2@example.com"}))
    bad_email = Change("3", "upsert", "h", {"email": "not-an-email", "firstname": "x"})
    outcomes = {o.key: o for o in client(sandbox).write([*contacts(1, 2), bad_email])}
    assert outcomes["1"].status == "delivered"
    assert outcomes["2"].status == "rejected" and (outcomes["2"].reason or "").startswith("VALIDATION_ERROR")
    assert "c2@example.com" not in (outcomes["2"].reason or ""), "HubSpot's quote of the value is redacted"
    assert "not-an-email" not in (outcomes["3"].reason or "")
    assert outcomes["3"].status == "rejected" and "is invalid" in (outcomes["3"].reason or "")


def test_a_whole_batch_400_is_split_until_the_bad_record_is_isolated(sandbox: HubSpotSandbox) -> None:
    sandbox.set_faults(Faults(fail_batch_values={"c37@example.com"}))
    outcomes = {o.key: o for o in Delivery(client(sandbox), retry=NO_WAIT).deliver(contacts(*range(100)))}
    assert [k for k, o in outcomes.items() if o.status == "rejected"] == ["37"]
    assert len(sandbox.objects("contacts")) == 99


def test_insert_mode_skips_records_that_already_exist(sandbox: HubSpotSandbox) -> None:
    client(sandbox).write(contacts(5))
    outcomes = {
        o.key: o for o in Delivery(client(sandbox, "insert"), retry=NO_WAIT).deliver(contacts(4, 5, 6))
    }
    assert outcomes["5"].status == "skipped" and outcomes["5"].destination_id
    assert outcomes["4"].status == outcomes["6"].status == "delivered"
    assert len(sandbox.objects("contacts")) == 3


def test_update_mode_skips_records_hubspot_does_not_have(sandbox: HubSpotSandbox) -> None:
    client(sandbox).write(contacts(1))
    outcomes = {o.key: o for o in client(sandbox, "update").write(contacts(1, 2))}
    assert outcomes["1"].status == "delivered"
    assert outcomes["2"].status == "skipped" and "existing records only" in (outcomes["2"].reason or "")
    assert len(sandbox.objects("contacts")) == 1


def test_archive_uses_the_recorded_hubspot_id(sandbox: HubSpotSandbox) -> None:
    [outcome] = client(sandbox).write(contacts(9))
    gone = client(sandbox).write([Change("9", "archive", destination_id=outcome.destination_id)])
    assert gone[0].status == "delivered" and sandbox.objects("contacts") == []


@pytest.mark.parametrize(("token", "status"), [("wrong", "401"), ("forbidden-token", "403")])
def test_auth_failures_stop_the_run(sandbox: HubSpotSandbox, token: str, status: str) -> None:
    with pytest.raises(DestinationAuthError, match=status):
        client(sandbox, token=token).write(contacts(1))


def test_the_rolling_limit_429_waits_one_interval(sandbox: HubSpotSandbox) -> None:
    sandbox.set_faults(Faults(rate_429=1.0))
    with pytest.raises(RateLimited, match="TEN_SECONDLY_ROLLING") as caught:
        client(sandbox).write(contacts(1))
    assert caught.value.retry_after == 10.0


def test_retry_after_is_read_when_sent(sandbox: HubSpotSandbox) -> None:
    sandbox.set_faults(Faults(rate_429=1.0, retry_after_429=0.25))
    with pytest.raises(RateLimited) as caught:
        client(sandbox).write(contacts(1))
    assert caught.value.retry_after == 0.25


def test_a_423_lock_waits_at_least_two_seconds(sandbox: HubSpotSandbox) -> None:
    sandbox.set_faults(Faults(rate_423=1.0))
    with pytest.raises(RateLimited) as caught:
        client(sandbox).write(contacts(1))
    assert caught.value.retry_after == 2.0


@pytest.mark.parametrize(
    "fault", [Faults(rate_5xx=1.0), Faults(rate_reset=1.0), Faults(rate_timeout=1.0, timeout_seconds=1.0)]
)
def test_5xx_resets_and_timeouts_are_transient(sandbox: HubSpotSandbox, fault: Faults) -> None:
    sandbox.set_faults(fault)
    with pytest.raises(DestinationUnavailable):
        client(sandbox, timeout_s=0.3).write(contacts(1))


def test_more_than_100_inputs_is_refused_before_sending(sandbox: HubSpotSandbox) -> None:
    with pytest.raises(ValueError, match="at most 100"):
        client(sandbox).write(contacts(*range(101)))
    assert sandbox.stats()["requests"] == 0


def test_transient_faults_are_retried_to_success_through_the_delivery(sandbox: HubSpotSandbox) -> None:
    sandbox.set_faults(Faults(rate_5xx=0.3, rate_reset=0.1, seed=7))
    retry = RetryPolicy(attempts=8, base_s=0.01, cap_s=0.05)
    outcomes = Delivery(client(sandbox), retry=retry).deliver(contacts(*range(500)))
    assert all(o.status == "delivered" for o in outcomes)
    assert len(sandbox.objects("contacts")) == 500


def test_a_request_that_400s_for_its_shape_is_request_rejected(sandbox: HubSpotSandbox) -> None:
    duplicate = contacts(1) + [Change("2", "upsert", "h", {"email": "c1@example.com"})]
    with pytest.raises(RequestRejected, match="400"):
        client(sandbox).write(duplicate)


@pytest.mark.parametrize(
    ("version", "path"),
    [
        (None, "/crm/objects/2026-03/contacts/batch/upsert"),
        ("2026-09", "/crm/objects/2026-09/contacts/batch/upsert"),
        ("v3", "/crm/v3/objects/contacts/batch/upsert"),
    ],
)
def test_requests_go_to_the_date_versioned_paths_unless_v3_is_asked_for(
    sandbox: HubSpotSandbox, monkeypatch: pytest.MonkeyPatch, version: str | None, path: str
) -> None:
    import requests

    sent: list[str] = []
    real = requests.Session.send

    def send(
        session: requests.Session, request: requests.PreparedRequest, **kwargs: object
    ) -> requests.Response:
        sent.append(str(request.path_url))
        return real(session, request, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(requests.Session, "send", send)
    hubspot = client(sandbox, **({"api_version": version} if version else {}))
    assert [o.status for o in hubspot.write(contacts(1))] == ["delivered"]
    assert sent == [path]


def test_a_version_hubspot_does_not_have_stops_the_run_naming_it(sandbox: HubSpotSandbox) -> None:
    from syncback.errors import SystemicError

    with pytest.raises(SystemicError, match="no API version 2025-09"):
        client(sandbox, api_version="2025-09").write(contacts(1))
