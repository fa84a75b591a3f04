"""Malformed specs, each refused by `validate` with one line naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncback.cli import main
from syncback.destinations.catalog import REGISTRY
from tests.conftest import BASE_SYNC, contacts_rows, write_project

HUB = BASE_SYNC["destination"]
HOOK = {"type": "webhook", "url": "https://hooks.example.com/x"}


def sync(**changes: Any) -> dict[str, Any]:
    spec = {**BASE_SYNC, **changes}
    return {k: v for k, v in spec.items() if v is not None}


# (spec, field, words in the message); the file is always syncs/contacts.yaml
CASES: list[tuple[dict[str, Any], str, str]] = [
    (sync(colour="red"), "colour", "unknown field"),
    (sync(primary_key=None), "primary_key", "required"),
    (sync(warehouse=None), "warehouse", "required"),
    (sync(destination=None), "destination", "required"),
    (sync(mapping=None), "mapping", "required"),
    (sync(mapping={}), "mapping", "at least 1"),
    (sync(mode="merge"), "mode", "'upsert'"),
    (sync(mode="mirror"), "guards", "add guards: {max_delete_pct: 10}"),
    (
        sync(mode="mirror", guards={"max_delete_pct": 150}),
        "guards.max_delete_pct",
        "less than or equal to 100",
    ),
    (sync(guards={"max_deletes": 5}), "guards.max_deletes", "unknown field"),
    (sync(table=None), "model", "exactly one of model"),
    (sync(model="select 1"), "model", "exactly one of model"),
    (sync(table="analytics.contacts; drop table x"), "table", "pattern"),
    (sync(primary_key='customer"id'), "primary_key", "pattern"),
    (sync(name="Contacts"), "name", "lower-case letters"),
    (sync(name="other_name"), "name", "differs from the file name"),
    (sync(warehouse="prod"), "warehouse", "not in syncback.yaml"),
    (sync(schedule="cron(0 6 * * *)"), "schedule", "EventBridge cron takes 6"),
    (sync(schedule="cron(0 6 * * * *)"), "schedule", "must be '?'"),
    (sync(schedule="cron(75 6 * * ? *)"), "schedule", "out of range"),
    (sync(schedule="rate(0 minutes)"), "schedule", "singular unit"),
    (sync(schedule="hourly"), "schedule", "neither rate"),
    (sync(batch_size=0), "batch_size", "greater than or equal to 1"),
    (sync(batch_size="many"), "batch_size", "valid integer"),
    (
        sync(destination={**HUB, "token": "pat-na1-11111111"}),
        "destination.token",
        "never written in the file",
    ),
    (sync(destination={**HUB, "token": "vault:hubspot"}), "destination.token", "env:NAME"),
    # an unknown type names every registered one
    (
        sync(destination={**HUB, "type": "pipedrive"}),
        "destination",
        ", ".join(f"'{n}'" for n in sorted(REGISTRY)),
    ),
    (sync(destination={**HUB, "base_url": "ftp://x"}), "destination.base_url", "http:// or https://"),
    (
        sync(destination={**HUB, "base_url": "http://api.hubapi.com"}),
        "destination.base_url",
        "clear text; use https://",
    ),
    (
        sync(
            destination={"type": "webhook", "url": "http://hooks.example.com:8080/in"},
            mapping={"email": "email"},
        ),
        "destination.url",
        "http:// is for this machine only: 127.0.0.1, localhost, [::1]",
    ),
    (
        sync(destination={**HUB, "rate_limit": {"requests": 0}}),
        "destination.rate_limit.requests",
        "greater than 0",
    ),
    (sync(destination={**HUB, "concurrency": 500}), "destination.concurrency", "less than or equal to 64"),
    (sync(destination={**HUB, "id_property": "hs_email"}), "mapping", "has no field 'hs_email'"),
    (sync(destination={**HOOK, "secret": "whsec_abc"}), "destination.secret", "never written in the file"),
    (sync(destination={**HOOK, "batch_size": 0}), "destination.batch_size", "greater than or equal to 1"),
    (sync(destination={"type": "webhook"}), "destination.url", "required"),
    (
        sync(mapping={"email": {"column": "email", "transform": "titlecase"}}),
        "mapping.email.transform",
        "'titlecase' is not a transform; use one of: lower, upper",
    ),
    (
        sync(mapping={"email": {"column": "email", "transform": ["trim", "shout"]}}),
        "mapping.email.transform",
        "'shout' is not a transform",
    ),
    (sync(destination={k: v for k, v in HUB.items() if k != "object"}), "destination.object", "required"),
    (
        sync(destination={k: v for k, v in HUB.items() if k != "id_property"}),
        "destination.id_property",
        "required",
    ),
    (
        sync(mapping={"email": {"column": "email", "on_null": "zero"}}),
        "mapping.email.on_null",
        "'send' or 'skip'",
    ),
    (sync(mapping={"email": {"column": "email", "value": "x"}}), "mapping.email", "exactly one of column"),
    (sync(mapping={"email": {"columns": "email"}}), "mapping.email.columns", "unknown field"),
    (sync(mapping={"email": 42}), "mapping.email", "valid dictionary"),
    (
        sync(mapping={"email": "email", "src": {"value": "x", "on_null": "skip"}}),
        "mapping.src",
        "remove on_null",
    ),
    (
        sync(destination=HOOK, mode="insert"),
        "mode",
        "a webhook destination takes upsert or mirror, not insert",
    ),
]


@pytest.mark.parametrize(
    ("spec", "field", "words"), CASES, ids=[f"{i:02d}-{c[1]}" for i, c in enumerate(CASES)]
)
def test_validate_names_file_field_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: dict[str, Any], field: str, words: str
) -> None:
    # Given a project whose one sync has one mistake
    write_project(tmp_path, spec)
    # When it is validated: Then validate exits 2 with a `file: field: message` line for it
    assert main(["--project", str(tmp_path), "validate", "--offline"]) == 2
    lines = capsys.readouterr().err.splitlines()
    prefix = f"syncs/contacts.yaml: {field}: "
    assert any(line.startswith(prefix) and words in line for line in lines), lines


def test_there_are_at_least_thirty_malformed_specs() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (
            sync(mapping={"email": "email", "score": "lead_scor"}),
            "mapping.score",
            "the model has no column lead_scor",
        ),
        (sync(primary_key="id"), "primary_key", "the model has no column id"),
        (sync(table="analytics.nowhere"), "table", "nowhere"),
    ],
)
def test_validate_checks_the_model_in_the_warehouse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: dict[str, Any], field: str, words: str
) -> None:
    write_project(tmp_path, spec, contacts_rows(3))
    assert main(["--project", str(tmp_path), "validate"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"syncs/contacts.yaml: {field}: ") and words in line for line in lines), lines
    # and --offline checks the files only
    assert main(["--project", str(tmp_path), "validate", "--offline"]) == 0


def test_a_key_written_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a spec whose mapping names one field twice (plain YAML would keep the last silently)
    write_project(tmp_path, sync())
    text = (tmp_path / "syncs" / "contacts.yaml").read_text()
    (tmp_path / "syncs" / "contacts.yaml").write_text(
        text.replace("mapping:\n", "mapping:\n  email: first_name\n", 1)
    )
    assert main(["--project", str(tmp_path), "validate", "--offline"]) == 2
    assert (
        "syncs/contacts.yaml: line " in (err := capsys.readouterr().err) and "'email' is written twice" in err
    )


def test_validate_names_an_unset_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUBSPOT_TOKEN", raising=False)
    write_project(tmp_path, sync(), contacts_rows(3))
    assert main(["--project", str(tmp_path), "validate"]) == 2
    err = capsys.readouterr().err
    assert "syncs/contacts.yaml: destination.token: environment variable HUBSPOT_TOKEN is not set" in err


@pytest.mark.parametrize("secret", ["not base64 at all", "whsec_!!!"])
def test_validate_refuses_a_webhook_secret_standard_webhooks_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    # Given a webhook secret that is not base64 (after an optional whsec_), as receivers decode it
    monkeypatch.setenv("HOOK_SECRET", secret)
    spec = sync(
        destination={"type": "webhook", "url": "https://hooks.example.com/x", "secret": "env:HOOK_SECRET"},
        mapping={"email": "email"},
    )
    write_project(tmp_path, spec, contacts_rows(3))
    # When validated: Then it names the field, says why, gives the fix, and never quotes the secret
    assert main(["--project", str(tmp_path), "validate"]) == 2
    err = capsys.readouterr().err
    assert (
        "syncs/contacts.yaml: destination.secret: " in err and "not base64" in err and "generate one" in err
    )
    assert secret not in err
