"""Shared fixtures: a small project on a DuckDB warehouse, written to a temporary folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from syncback.cli import main
from syncback.spec import Project, load_project
from tests.fakes.contract import Fake, fakes

BASE_SYNC: dict[str, Any] = {
    "name": "contacts",
    "warehouse": "local",
    "table": "analytics.contacts",
    "primary_key": "customer_id",
    "mode": "upsert",
    "destination": {
        "type": "hubspot",
        "object": "contacts",
        "id_property": "email",
        "token": "env:HUBSPOT_TOKEN",
        "base_url": "http://127.0.0.1:9",
        "rate_limit": {"requests": 1000, "per_seconds": 1},
    },
    "mapping": {
        "email": "email",
        "firstname": "first_name",
        "lead_score": {"column": "lead_score", "transform": "integer"},
        "ltv": {"column": "lifetime_value", "on_null": "skip"},
        "source": {"value": "warehouse"},
    },
    "batch_size": 50,
}


def contacts_rows(n: int, start: int = 1) -> list[tuple[Any, ...]]:
    return [
        (i, f"user{i}@example.com", f"First{i}", i % 100, None if i % 7 == 0 else i * 1.5)
        for i in range(start, start + n)
    ]


def write_contacts(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """Replace analytics.contacts in the DuckDB file at ``path`` with ``rows``."""
    con = duckdb.connect(str(path))
    con.execute("create schema if not exists analytics")
    con.execute(
        "create or replace table analytics.contacts (customer_id integer, email varchar, first_name varchar, "
        "lead_score integer, lifetime_value double)"
    )
    if rows:
        # one statement over column lists: executemany takes seconds for 20,000 rows
        columns = [list(column) for column in zip(*rows, strict=True)]
        con.execute(
            "insert into analytics.contacts select unnest(?), unnest(?), unnest(?), unnest(?), unnest(?)",
            columns,
        )
    con.close()


def write_project(
    root: Path, sync: dict[str, Any], rows: list[tuple[Any, ...]] | None = None, file: str = "contacts"
) -> Path:
    """Write a project on a DuckDB warehouse (``wh.duckdb``) with one sync; return its folder.

    ``rows`` fill ``analytics.contacts`` (see ``contacts_rows``); the sync goes to ``syncs/<file>.yaml``.
    """
    (root / "syncs").mkdir(parents=True, exist_ok=True)
    (root / "syncback.yaml").write_text(
        yaml.safe_dump(
            {
                "warehouses": {"local": {"type": "duckdb", "path": "wh.duckdb"}},
                "state": {"warehouse": "local", "schema": "syncback"},
            }
        )
    )
    (root / "syncs" / f"{file}.yaml").write_text(yaml.safe_dump(sync, allow_unicode=True))
    if rows is not None:
        write_contacts(root / "wh.duckdb", rows)
    return root


def contacts_sync(destination: dict[str, Any], mapping: dict[str, Any], /, **sync: Any) -> dict[str, Any]:
    """The sync most destination tests run: ``analytics.contacts`` by ``customer_id`` in mirror mode
    (deleting up to 40% of the snapshot) into ``destination`` with ``mapping``; ``sync`` overrides."""
    return {
        "name": "contacts",
        "warehouse": "local",
        "table": "analytics.contacts",
        "primary_key": "customer_id",
        "mode": "mirror",
        "guards": {"max_delete_pct": 40},
        "destination": destination,
        "mapping": mapping,
        **sync,
    }


ProjectFactory = Callable[..., Project]


def run_json(
    root: Path, capsys: pytest.CaptureFixture[str], *extra: str, sync: str = "contacts"
) -> tuple[int, dict[str, Any]]:
    """Run one sync through the CLI with ``--json``; return its exit code and the summary it printed."""
    code = main(["--project", str(root), "run", sync, "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def make_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProjectFactory:
    """Return a factory: ``make_project(rows=..., **sync_overrides)`` writes and loads a project."""
    monkeypatch.setenv("HUBSPOT_TOKEN", "test-token")

    def factory(rows: list[tuple[Any, ...]] | None = None, **overrides: Any) -> Project:
        return load_project(write_project(tmp_path, {**BASE_SYNC, **overrides}, rows))

    return factory


@pytest.fixture(params=sorted(fakes()))
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    """Every registered destination's fake, started, with its secrets in the environment: a test
    that takes it is a contract test, run against each destination."""
    with fakes()[request.param]() as started:
        for name, value in started.env.items():
            monkeypatch.setenv(name, value)
        yield started
