"""The sync spec and project config: valid files load, every mistake is named with file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from syncback.errors import ConfigError
from syncback.spec import check_schedule, json_schemas, load_project
from syncback.warehouses.duckdb import threads_for
from tests.conftest import BASE_SYNC, ProjectFactory

ROOT = Path(__file__).resolve().parents[2]


def problems_for(make_project: ProjectFactory, **overrides: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        make_project(**overrides)
    return [str(p) for p in caught.value.problems]


def test_the_example_project_loads() -> None:
    # Given the demo project shipped in example/; When it is loaded; Then its one sync is valid
    project = load_project(ROOT / "example")
    sync = project.sync("contacts_to_hubspot")
    assert sync.mode == "mirror" and sync.guards is not None
    assert "lifetime_value" in sync.columns and "customer_id" not in sync.columns


def test_a_bare_column_name_is_shorthand_for_a_column_mapping(make_project: ProjectFactory) -> None:
    project = make_project()
    mapping = project.sync("contacts").mapping
    assert mapping["email"].column == "email" and mapping["email"].on_null == "send"
    assert mapping["source"].value == "warehouse" and mapping["source"].column is None


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"tabel": "x"}, "tabel", "unknown field"),
        ({"primary_key": None}, "primary_key", "valid string"),
        ({"mode": "merge"}, "mode", "'upsert'"),
        ({"mode": "mirror"}, "guards", "mirror mode deletes records"),
        ({"model": "select 1"}, "model", "exactly one of model"),
        ({"schedule": "cron(0 6 * * *)"}, "schedule", "6"),
        ({"schedule": "rate(1 hours)"}, "schedule", "singular"),
        ({"schedule": "every hour"}, "schedule", "neither"),
        ({"mapping": {}}, "mapping", "at least 1"),
        (
            {"mapping": {"email": {"column": "email", "transform": "shout"}}},
            "mapping.email.transform",
            "'shout' is not a transform; use one of: lower",
        ),
        ({"mapping": {"email": {"column": "a", "value": 1}}}, "mapping.email", "exactly one of column"),
        ({"name": "Bad Name"}, "name", "lower-case letters"),
        ({"name": "other"}, "name", "differs from the file name"),
        ({"warehouse": "nowhere"}, "warehouse", "not in syncback.yaml"),
        ({"batch_size": 0}, "batch_size", "greater than or equal"),
    ],
)
def test_each_mistake_is_reported_with_file_field_and_fix(
    make_project: ProjectFactory, overrides: dict[str, object], field: str, words: str
) -> None:
    # Given a spec with one mistake; When loaded; Then one line names the file, the field and the fix
    lines = problems_for(make_project, **overrides)
    assert any(line.startswith(f"syncs/contacts.yaml: {field}: ") and words in line for line in lines), lines


def test_a_secret_written_inline_is_refused(make_project: ProjectFactory) -> None:
    destination = {**BASE_SYNC["destination"], "token": "pat-na1-secret-value"}
    lines = problems_for(make_project, destination=destination)
    assert lines == [
        "syncs/contacts.yaml: destination.token: secrets are never written in the file: use env:NAME "
        "(an environment variable) or secret:NAME (an AWS Secrets Manager secret)"
    ]


def test_a_hubspot_sync_must_map_its_id_property(make_project: ProjectFactory) -> None:
    lines = problems_for(make_project, mapping={"firstname": "first_name"})
    assert any("destination.id_property" in line and "email" in line for line in lines), lines


def test_every_file_is_checked_and_all_problems_reported(tmp_path: Path) -> None:
    # Given a project whose config and two syncs are each wrong
    (tmp_path / "syncs").mkdir()
    (tmp_path / "syncback.yaml").write_text("warehouses: {}\nstate: {warehouse: x}\n")
    (tmp_path / "syncs" / "a.yaml").write_text("name: a\n: broken yaml [\n")
    (tmp_path / "syncs" / "b.yaml").write_text(yaml.safe_dump({**BASE_SYNC, "name": "c"}))
    # When it is loaded
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    files = {p.file for p in caught.value.problems}
    # Then each file has its own problem
    assert files == {"syncback.yaml", "syncs/a.yaml", "syncs/b.yaml"}
    assert any(p.field == "name" and "file name" in p.message for p in caught.value.problems)


def test_a_missing_config_file_says_where_it_should_be(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="syncback.yaml: \\(file\\): missing"):
        load_project(tmp_path)


def test_snowflake_needs_exactly_one_auth_method(tmp_path: Path) -> None:
    (tmp_path / "syncback.yaml").write_text(
        "warehouses:\n  prod: {type: snowflake, account: a, user: u}\nstate: {warehouse: prod}\n"
    )
    with pytest.raises(ConfigError, match="exactly one of private_key"):
        load_project(tmp_path)


def test_a_duckdb_memory_limit_too_small_for_its_readers_is_refused_naming_the_least(tmp_path: Path) -> None:
    (tmp_path / "syncback.yaml").write_text(
        "warehouses:\n  local: {type: duckdb, memory_limit: 64MB}\nstate: {warehouse: local}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.field) == ("syncback.yaml", "warehouses.local.memory_limit")
    assert "give at least 128MB" in problem.message


@pytest.mark.parametrize(
    ("limit", "cores", "threads"),
    [
        ("192MB", 2, 2),
        ("192MB", 8, 2),
        ("256MB", 8, 2),
        ("128MB", 8, 1),
        ("1GB", 4, 4),
        ("1.5 GB", 32, 15),
        ("300MB", 1, 1),
    ],
)
def test_duckdb_gets_a_thread_per_96mb_of_its_limit_up_to_one_per_core(
    limit: str, cores: int, threads: int
) -> None:
    assert threads_for(limit, cores) == threads


@pytest.mark.parametrize(
    "good", ["rate(1 hour)", "rate(15 minutes)", "cron(0 6 * * ? *)", "cron(0/15 * ? * MON-FRI *)"]
)
def test_eventbridge_schedules_are_accepted(good: str) -> None:
    check_schedule(good)


def test_committed_json_schemas_match_the_models() -> None:
    # Given the schemas generated from the pydantic models; Then the committed copies are the same
    for name, schema in json_schemas().items():
        committed = (ROOT / "schema" / name).read_text()
        import json

        assert json.loads(committed) == schema, f"schema/{name} is stale: run `make schema`"
