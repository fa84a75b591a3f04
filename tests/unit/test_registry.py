"""The destination registry: every destination declares itself once, and the rest reads it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from syncback.destinations import registry
from syncback.destinations.catalog import REGISTRY
from syncback.spec import SyncSpec, json_schemas
from tests.conftest import BASE_SYNC
from tests.fakes.contract import fakes


def test_every_registered_destination_has_a_fake_for_the_contract_suites() -> None:
    # the nasty rows, the faults and the convergence property run against every fake: a
    # destination without one would go untested by them
    assert {fake.name for fake in fakes().values()} == set(REGISTRY)


def test_the_spec_and_its_schema_admit_exactly_the_registered_types() -> None:
    variants = json_schemas()["sync.schema.json"]["properties"]["destination"]["oneOf"]
    assert len(variants) == len(REGISTRY)


def test_a_destination_that_cannot_remove_records_refuses_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given HubSpot declared as a destination that cannot remove records
    monkeypatch.setitem(REGISTRY, "hubspot", dataclasses.replace(REGISTRY["hubspot"], removal="unsupported"))
    sync = SyncSpec.model_validate({**BASE_SYNC, "mode": "upsert"})
    # Then a mirror sync to it is refused, naming the mode and the way out
    problems = registry.sync_problems(sync.model_copy(update={"mode": "mirror"}))
    assert problems and problems[0][0] == "mode" and "cannot remove records; use upsert" in problems[0][1]
    assert registry.sync_problems(sync) == []


def test_a_destination_that_clears_on_removal_gets_its_fields_emptied_not_archived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncback.batches import LocalBatchStore
    from syncback.runner import Runtime, run_sync
    from syncback.spec import load_project
    from syncback.state import LocalStateStore
    from tests.conftest import contacts_rows, write_contacts, write_project
    from tests.fakes.recording import RecordingDestination

    # Given HubSpot declared as a destination whose records are cleared, never deleted, by mirror
    monkeypatch.setitem(REGISTRY, "hubspot", dataclasses.replace(REGISTRY["hubspot"], removal="clear"))
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    sync = {**BASE_SYNC, "mode": "mirror", "guards": {"max_delete_pct": 50}}
    write_project(tmp_path, sync, contacts_rows(10))
    project = load_project(tmp_path)
    destination = RecordingDestination()
    rt = Runtime(project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path))
    rt = dataclasses.replace(rt, destination_factory=lambda spec: destination)
    run_sync(rt, "contacts")
    # When two rows leave the model
    write_contacts(tmp_path / "wh.duckdb", contacts_rows(8))
    record = run_sync(rt, "contacts")
    # Then their records stay, with every mapped field but the identifier emptied
    assert record.planned["removed"] == 2 and record.delivered == 2
    assert set(destination.records) == {str(i) for i in range(1, 11)}
    cleared = destination.records["10"]
    assert all(value is None for name, value in cleared.items() if name != "email") and len(cleared) > 1


@pytest.mark.parametrize(("removal", "left"), [("archive", {"9", "10"}), ("delete", set())])
def test_a_destination_that_deletes_on_removal_deletes_records_it_did_not_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, removal: str, left: set[str]
) -> None:
    from syncback.batches import LocalBatchStore
    from syncback.runner import Runtime, run_sync
    from syncback.spec import load_project
    from syncback.state import LocalStateStore
    from tests.conftest import contacts_rows, write_contacts, write_project
    from tests.fakes.recording import RecordingDestination

    # Given a destination whose config chooses its removal, holding every record before the sync
    # wrote it (so the sync created none of them)
    kind = dataclasses.replace(REGISTRY["hubspot"], removal=lambda config: removal)
    monkeypatch.setitem(REGISTRY, "hubspot", kind)
    monkeypatch.setenv("HUBSPOT_TOKEN", "t")
    sync = {**BASE_SYNC, "mode": "mirror", "guards": {"max_delete_pct": 50}}
    write_project(tmp_path, sync, contacts_rows(10))
    project = load_project(tmp_path)
    destination = RecordingDestination()
    destination.records = {str(i): {} for i in range(1, 11)}
    rt = Runtime(project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path))
    rt = dataclasses.replace(rt, destination_factory=lambda spec: destination)
    assert registry.removal_of(project.sync("contacts")) == removal
    run_sync(rt, "contacts")
    # When two rows leave the model
    write_contacts(tmp_path / "wh.duckdb", contacts_rows(8))
    record = run_sync(rt, "contacts")
    # Then archive leaves what the sync did not create; delete removes them all the same
    assert record.planned["removed"] == 2
    assert set(destination.records) - {str(i) for i in range(1, 9)} == left


def test_registering_a_type_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(REGISTRY["webhook"])


def test_nothing_outside_a_destinations_package_names_one() -> None:
    # the engine reads the registry; only a destination's package (and the demo's sandbox, and the
    # CLI's sandbox command) may name a destination
    root = Path(registry.__file__).resolve().parents[1]
    allowed = {root / "destinations" / name for name in REGISTRY} | {root / "sandbox"}
    offenders = []
    for path in root.rglob("*.py"):
        if any(parent in allowed for parent in path.parents):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").lower().splitlines(), 1):
            if "sandbox" in line:
                continue  # `syncback sandbox hubspot` starts the demo's sandbox
            for name in REGISTRY:
                if f'"{name}"' in line or f"destinations.{name}" in line or f"{name}destination" in line:
                    offenders.append(f"{path.relative_to(root)}:{number}: {name}")
    assert not offenders, offenders
