"""A run's pinned spec: what Plan stores with a run validates back to the very spec it was planned
with, for every destination the README documents and every form a sync's fields take."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from syncback.destinations.catalog import REGISTRY
from syncback.spec import Project, ProjectConfig, SyncSpec

ROOT = Path(__file__).resolve().parents[2]


def readme_blocks() -> list[dict[str, Any]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    return [b for b in blocks if isinstance(b, dict)]


BLOCKS = readme_blocks()
PROJECT = next(b for b in BLOCKS if "warehouses" in b)
FULL_SYNC = next(b for b in BLOCKS if "name" in b and "destination" in b)
#: every destination block the README shows, with what its example sets beside it (a whole sync,
#: or a fragment: the destination and its mapping, the rest taken from the first example)
EXAMPLES = [b for b in BLOCKS if "destination" in b]

CHECKS = [
    {"column": "email", "max_null_pct": 0},
    {"row_count": {"min": 1000, "max_change_pct": 20}},
    {"column": "lead_score", "between": [0, 100]},
    {"column": "plan", "accepted_values": ["free", "pro", "enterprise"]},
    {"column": "customer_id", "unique": True},
    {"column": "last_seen", "max_age": "2 days", "severity": "warn"},
]


def column_forms(column: str, hashed: bool = False) -> st.SearchStrategy[Any]:
    """The forms one mapped field takes: a bare column, or a block with transforms and on_null
    (no sha256 where the destination hashes the field itself)."""
    transforms: list[Any] = ["lower", "string", "iso_date"]
    if not hashed:
        transforms.insert(1, ["trim", "lower", "sha256"])
    return st.one_of(
        st.just(column),
        st.fixed_dictionaries(
            {"column": st.just(column)},
            optional={
                "transform": st.sampled_from(transforms),
                "on_null": st.sampled_from(["send", "skip"]),
            },
        ),
    )


@st.composite
def syncs(draw: st.DrawFn) -> dict[str, Any]:
    example = draw(st.sampled_from(EXAMPLES))
    destination, mapping = example["destination"], example.get("mapping", FULL_SYNC["mapping"])
    kind = REGISTRY[destination["type"]]
    # a destination may need more of its example than the mapping (Braze: the primary key)
    spec = {k: v for k, v in {**FULL_SYNC, **example}.items() if k != "mapping"}
    spec["mode"] = draw(
        st.sampled_from([m for m in kind.modes if kind.removal != "unsupported" or m != "mirror"])
    )
    hashed = kind.hashed(kind.config.model_validate(destination))
    spec["mapping"] = {
        field: draw(column_forms(column, field in hashed)) if isinstance(column, str) else column
        for field, column in mapping.items()
    }
    spec["checks"] = draw(st.lists(st.sampled_from(CHECKS), unique_by=lambda c: str(c), max_size=4))
    for optional in ("alerts", "max_changes_per_run", "description", "owner", "schedule", "batch_size"):
        if optional in spec and draw(st.booleans()):
            del spec[optional]
    return spec


@given(syncs())
@settings(max_examples=150, deadline=None)
def test_a_pinned_spec_validates_back_to_the_spec_it_pins(document: dict[str, Any]) -> None:
    # Given any valid sync the README's destinations allow, in a project
    sync = SyncSpec.model_validate(document)
    project = Project(root=ROOT, config=ProjectConfig.model_validate(PROJECT), syncs={sync.name: sync})
    # When Plan pins it with a run and Deliver reads it back
    pinned = Project.from_pinned(Path("/opt"), project.pinned(sync.name))
    # Then Deliver works to the same spec, and the same project settings
    assert pinned.sync(sync.name) == sync
    assert pinned.config == project.config
    assert pinned.root == Path("/opt")


def test_every_destination_the_readme_documents_is_pinned() -> None:
    # the property above draws from the README's destination blocks: each registered type has one
    assert {e["destination"]["type"] for e in EXAMPLES} == set(REGISTRY)


def test_found_the_braze_example_needs_its_own_primary_key_to_be_pinned() -> None:
    # found by the property above when Braze came: its example maps external_id from its own
    # primary key, which the first example (HubSpot's) does not have; each example is pinned whole
    braze = next(e for e in EXAMPLES if e["destination"]["type"] == "braze")
    sync = SyncSpec.model_validate({**FULL_SYNC, **braze})
    project = Project(root=ROOT, config=ProjectConfig.model_validate(PROJECT), syncs={sync.name: sync})
    assert Project.from_pinned(ROOT, project.pinned(sync.name)).sync(sync.name) == sync
