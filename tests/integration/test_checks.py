"""Data checks before anything is sent: each kind passing and failing on DuckDB through the CLI (plan
shows them all; a failing error stops the run, a failing warning is recorded), the row count against
the last run, what a wrong check says, and the same query in Snowflake SQL (fakesnow)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakesnow
import pytest

from syncback.checks import evaluate
from syncback.cli import main
from syncback.errors import ConfigError
from syncback.sandbox.hubspot import HubSpotSandbox
from syncback.secrets import SecretResolver
from syncback.spec import load_project
from syncback.spec_parts import Check
from syncback.warehouses.snowflake import SnowflakeWarehouse
from tests.conftest import BASE_SYNC, contacts_rows, write_contacts, write_project
from tests.integration.test_snowflake_warehouse import PASSWORD_ENV, snowflake_config

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")
NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None)
# the model: contacts, each seen an hour ago but the first, seen 3 days ago
MODEL = (
    "select *, case when customer_id = 1 then timestamp '{old}' else timestamp '{new}' end as last_seen "
    "from analytics.contacts"
).format(
    old=f"{NOW - dt.timedelta(days=3):%Y-%m-%d %H:%M:%S}",
    new=f"{NOW - dt.timedelta(hours=1):%Y-%m-%d %H:%M:%S}",
)


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubSpotSandbox]:
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    with HubSpotSandbox(token="t", requests_per_window=None) as server:
        yield server


def project(root: Path, sandbox: HubSpotSandbox, checks: list[dict[str, Any]], rows: int = 20) -> Path:
    spec = {k: v for k, v in BASE_SYNC.items() if k != "table"}
    destination = {**BASE_SYNC["destination"], "base_url": sandbox.url}
    return write_project(
        root, {**spec, "model": MODEL, "destination": destination, "checks": checks}, contacts_rows(rows)
    )


def cli(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main(["--project", str(root), *args, "contacts", "--json"])
    return code, json.loads(capsys.readouterr().out)


# lead_score is i % 100 (1..20 here), lifetime_value null for every 7th, emails unique
PASSING = [
    {"column": "email", "max_null_pct": 0},
    {"row_count": {"min": 10, "max": 100}},
    {"column": "lead_score", "between": [0, 100]},
    {"column": "lead_score", "accepted_values": list(range(1, 21))},
    {"column": "customer_id", "unique": True},
    {"column": "last_seen", "max_age": "4 days"},
    {"column": "lifetime_value", "max_null_pct": 15},
]
FAILING = [
    ({"column": "lifetime_value", "max_null_pct": 5}, "10.00% null (2 of 20 rows)"),
    ({"row_count": {"min": 50}}, "20 rows: below min 50"),
    ({"column": "lead_score", "between": [0, 10]}, "10 of 20 rows outside"),
    ({"column": "first_name", "accepted_values": ["First1", "First2"]}, "18 of 20 rows outside"),
]


def test_every_check_that_holds_passes_and_the_run_goes_on(
    tmp_path: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, sandbox, PASSING)
    code, plan = cli(root, capsys, "plan")
    assert code == 0 and [c["passed"] for c in plan["checks"]] == [True] * len(PASSING), plan["checks"]
    code, summary = cli(root, capsys, "run")
    assert code == 0 and summary["delivered"] == 20 and summary["warnings"] == []


@pytest.mark.parametrize(("check", "says"), FAILING)
def test_a_failing_check_shows_in_plan_and_stops_the_run_before_anything_is_sent(
    tmp_path: Path,
    sandbox: HubSpotSandbox,
    capsys: pytest.CaptureFixture[str],
    check: dict[str, Any],
    says: str,
) -> None:
    root = project(tmp_path, sandbox, [PASSING[0], check])
    # plan shows every check, and exits 3: a run would stop
    code, plan = cli(root, capsys, "plan")
    assert code == 3 and [c["passed"] for c in plan["checks"]] == [True, False]
    assert plan["checks"][1]["detail"].startswith(says), plan["checks"][1]
    # the run stops before delivery, failed, saying which check and what it found
    code, summary = cli(root, capsys, "run")
    assert (
        code == 3 and summary["status"] == "failed" and "GuardError: data checks failed" in summary["error"]
    )
    assert says in summary["error"] and sandbox.stats()["inputs"] == 0
    assert main(["--project", str(root), "runs", "contacts"]) == 0
    assert "data checks failed" in capsys.readouterr().out


def test_freshness_is_the_newest_value_against_now(
    tmp_path: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, sandbox, [{"column": "last_seen", "max_age": "30 minutes", "severity": "warn"}])
    # a warning only: the run goes on, and says what it found
    code, summary = cli(root, capsys, "run")
    assert code == 0 and summary["delivered"] == 20
    (warning,) = summary["warnings"]
    assert warning.startswith("last_seen max_age 30 minutes: newest ") and "1.0 hours old" in warning


def test_the_row_count_may_move_by_at_most_a_share_of_the_last_run(
    tmp_path: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, sandbox, [{"row_count": {"max_change_pct": 20}}])
    assert cli(root, capsys, "run")[0] == 0  # no last run: nothing to compare with
    write_contacts(root / "wh.duckdb", contacts_rows(23))  # +15%
    code, plan = cli(root, capsys, "plan")
    assert code == 0 and plan["checks"][0]["detail"] == "23 rows, +15.0% against the last run's 20"
    assert cli(root, capsys, "run")[0] == 0
    write_contacts(root / "wh.duckdb", contacts_rows(12))  # -47.8%: the model lost rows
    code, summary = cli(root, capsys, "run")
    assert code == 3 and "changed more than 20%" in summary["error"]


@pytest.mark.parametrize(
    ("check", "says"),
    [
        ({"column": "email", "max_null_pct": 0, "unique": True}, "a check has exactly one of"),
        ({"max_null_pct": 0}, "max_null_pct checks a column: add column"),
        ({"column": "email", "row_count": {"min": 1}}, "row_count checks the whole model: remove column"),
        ({"column": "lead_score", "between": [10, 0]}, "between: [10.0, 0.0] is empty"),
        ({"column": "last_seen", "max_age": "soon"}, "max_age: 'soon' is not a duration"),
        ({"column": "email", "unique": True, "severity": "fatal"}, "checks.0.severity"),
    ],
)
def test_a_wrong_check_is_a_clear_error_naming_the_file_and_field(
    tmp_path: Path, sandbox: HubSpotSandbox, check: dict[str, Any], says: str
) -> None:
    project(tmp_path, sandbox, [check])
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert says in str(caught.value) and "syncs/contacts.yaml" in str(caught.value)


def test_a_check_of_a_column_the_model_lacks_names_it(
    tmp_path: Path, sandbox: HubSpotSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path, sandbox, [PASSING[0], {"column": "segment", "unique": True}])
    assert main(["--project", str(root), "plan", "contacts"]) == 3
    err = capsys.readouterr().err
    assert (
        "syncs/contacts.yaml: checks[1].column: the model has no column 'segment'; it has customer_id" in err
    )


def test_checks_run_in_snowflake_sql() -> None:
    with fakesnow.patch():
        warehouse = SnowflakeWarehouse(
            snowflake_config(), SecretResolver(environ=PASSWORD_ENV), name="snowflake"
        )
        try:
            warehouse.execute(
                "create table analytics.people (ID integer, EMAIL varchar, SCORE integer, SEEN timestamp)"
            )
            warehouse.execute(
                "insert into analytics.people values (1, 'a@x.io', 5, '2026-11-29 12:00:00'), "
                "(2, null, 50, '2026-11-30 11:00:00'), (2, 'c@x.io', 500, null)"
            )
            checks = [
                Check.model_validate(c)
                for c in (
                    {"column": "email", "max_null_pct": 10},
                    {"column": "score", "between": [0, 100]},
                    {"column": "id", "unique": True},
                    {"column": "score", "accepted_values": [5, 50]},
                    {"column": "seen", "max_age": "2 hours"},
                    {"row_count": {"min": 3}},
                )
            ]
            columns = [name for name, _ in warehouse.columns("select * from analytics.people")]
            now = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
            results = evaluate(
                warehouse, "select * from analytics.people", columns, checks, None, now, "syncs/people.yaml"
            )
            assert [(r.passed, r.detail) for r in results] == [
                (False, "33.33% null (1 of 3 rows)"),
                (False, "1 of 3 rows outside"),
                (False, "1 repeated values"),
                (False, "1 of 3 rows outside"),
                (True, "newest 2026-11-30 11:00 UTC, 1.0 hours old"),
                (True, "3 rows"),
            ]
        finally:
            warehouse.close()
