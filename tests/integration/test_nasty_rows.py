"""The awkward rows every destination must pass, over real HTTP to faithful fakes of each API:
every fake under ``tests/fakes/`` runs it, so a new destination gets it without editing it.

Nulls, duplicate and null keys, unicode, long strings, NaN and infinity, huge integers, quotes and
control characters, and a column whose type changes between runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from syncback.batches import LocalBatchStore
from syncback.delivery import RetryPolicy
from syncback.runner import Runtime, run_sync
from syncback.spec import load_project
from syncback.state import LocalStateStore
from tests.conftest import write_project
from tests.fakes.contract import Fake

LONG = "x" * 10_000 + "✓"
NASTY: list[tuple[Any, ...]] = [
    (1, "plain@example.com", "Plain", 1.5, 1),
    (2, "nullname@example.com", None, None, None),
    (3, "unicode@example.com", "Zoë 🚀 ünïcødé 中文 \u200b", 2.0, 3),
    (4, "long@example.com", LONG, 3.25, 4),
    (5, "nan@example.com", "NaN", float("nan"), 5),
    (6, "inf@example.com", "Inf", float("inf"), 6),
    (7, "dup-a@example.com", "Dup A", 1.0, 7),
    (7, "dup-b@example.com", "Dup B", 1.0, 7),
    (None, "nokey@example.com", "No key", 1.0, 8),
    (8, "huge@example.com", "Huge", 4.0, 2**80),
    (9, "  MiXeD@Example.COM ", "Mixed", 5.0, -(2**70)),
    (10, "quotes@example.com", 'O\'Brien "q"\n\t\\', -0.0, 0),
]
VALID = {"1", "2", "3", "4", "8", "9", "10"}


def write_model(path: Path, rows: list[tuple[Any, ...]], score_type: str = "double") -> None:
    con = duckdb.connect(str(path))
    con.execute("create schema if not exists analytics")
    con.execute(
        f"create or replace table analytics.people (id bigint, email varchar, name varchar, score {score_type}, "
        "big hugeint)"
    )
    con.executemany("insert into analytics.people values (?, ?, ?, ?, ?)", rows)
    con.close()


def held(fake: Fake) -> dict[str, dict[str, Any]]:
    """Return what the destination holds, by the model's key."""
    return {str(record["customer_id"]): record for record in fake.records()}


def test_every_destination_passes_the_nasty_rows(
    tmp_path: Path,
    fake: Fake,
) -> None:
    write_project(
        tmp_path,
        {
            "name": "people",
            "warehouse": "local",
            "table": "analytics.people",
            "primary_key": "id",
            "destination": fake.destination(),
            "batch_size": 4,
            "mapping": fake.mapping(
                {
                    "email": {"column": "email", "transform": ["trim", "lower"]},
                    "customer_id": "id",
                    "firstname": "name",
                    "score": "score",
                    "big": "big",
                },
                key_column="id",
            ),
        },
        file="people",
    )
    write_model(tmp_path / "wh.duckdb", NASTY)
    project = load_project(tmp_path)
    rt = Runtime(
        project,
        LocalBatchStore(project.state_path),
        LocalStateStore(project.state_path),
        retry=RetryPolicy(attempts=2, base_s=0, cap_s=0),
    )

    # When the sync runs
    record = run_sync(rt, "people")

    # Then the valid rows arrive exactly, and the invalid ones are reported, not sent (NaN and
    # infinity are invalid only where the score is sent: an audience holds identifiers alone)
    floats = fake.holds is None or "score" in fake.holds
    valid = VALID if floats else VALID | {"5", "6"}
    assert record.planned["invalid"] == (5 if floats else 3)
    assert record.delivered == len(valid) and record.rejected == 0
    reasons = " | ".join(item["reason"] for item in record.invalid_sample)
    assert "duplicate primary key (2 rows" in reasons and "is null (1 rows)" in reasons
    assert ("NaN or infinite" in reasons) == floats
    got = held(fake)
    assert set(got) == valid
    # as the destination stores them: the text itself, or (an audience) its hash
    assert got["3"]["firstname"] == fake.stored("firstname", "Zoë 🚀 ünïcødé 中文 \u200b")
    assert got["4"]["firstname"] == fake.stored("firstname", LONG)
    assert got["8"]["big"] == fake.stored("big", str(2**80))
    assert got["9"]["big"] == fake.stored("big", str(-(2**70)))
    assert got["9"]["email"] == fake.stored("email", "mixed@example.com")
    assert got["10"]["firstname"] == fake.stored("firstname", 'O\'Brien "q"\n\t\\')
    assert got["2"]["firstname"] in (None, "")  # HubSpot clears with "", a webhook gets null

    # When the score column changes type (double → varchar) between runs
    write_model(
        tmp_path / "wh.duckdb",
        [(*r[:3], None if r[3] is None else repr(r[3]), r[4]) for r in NASTY],
        score_type="varchar",
    )
    second = run_sync(rt, "people")
    # Then every valid row is sent again: a field of another kind may look different in JSON, so
    # the change of type counts as a change of every record (row 2's null score included); NaN and
    # inf as text are no longer invalid, so those rows are added (where no score is sent, nothing changed)
    assert second.planned["changed"] == (len(VALID) if floats else 0)
    assert second.planned["added"] == (2 if floats else 0)
    assert second.rejected == 0
    assert held(fake)["1"]["score"] == fake.stored("score", "1.5")
