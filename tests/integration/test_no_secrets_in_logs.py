"""Every log line of a run carries keys and counts, never a token or a record value."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from syncback.cli import main
from syncback.sandbox.hubspot import Faults, HubSpotSandbox
from tests.conftest import BASE_SYNC, contacts_rows, write_project

TOKEN = "pat-na1-0b7c5e1d-very-secret-token"


def test_a_run_logs_no_token_and_no_mapped_value(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a run that meets rejections and retries, with every logger at DEBUG
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    # a state-machine test earlier in this process imported the handlers, whose Powertools logger
    # owns "syncback" (level WARNING, no propagation): capture its records here all the same
    caplog.set_level(logging.DEBUG, logger="syncback")
    monkeypatch.setattr(logging.getLogger("syncback"), "propagate", True)
    rows = contacts_rows(300)
    with HubSpotSandbox(token=TOKEN) as sandbox:
        sandbox.set_faults(Faults(rate_5xx=0.2, reject_values={"user9@example.com"}, seed=3))
        destination = {**BASE_SYNC["destination"], "base_url": sandbox.url}
        write_project(tmp_path, {**BASE_SYNC, "destination": destination}, rows)
        # When it runs
        main(["--project", str(tmp_path), "run", "contacts"])
    # Then lines were logged (with the keys and counts), and none holds the token or a value
    text = "\n".join(
        f"{r.getMessage()} {' '.join(f'{k}={v}' for k, v in vars(r).items() if k not in ('msg', 'args'))}"
        for r in caplog.records
    )
    assert "planned" in text and "committed" in text
    assert TOKEN not in text
    for _, email, first_name, _, _ in rows:
        assert email not in text and f"{first_name} " not in text and f"{first_name}'" not in text
