"""A sync against a real destination fake, and the check that the destination ends equal to the model.

``World`` is one project on DuckDB writing to a destination's fake (``tests/fakes/``) over
loopback, with a model the test edits row by row, the real plan → deliver → commit and replay
code, and hooks that cut a run off where a killed process would stop. ``check_converged`` is the
property of the convergence issue, checked after a clean run:

1. every valid model row is in the destination exactly once, with exactly its mapped values;
2. in mirror mode nothing else this sync created remains, and nothing it did not create was archived;
3. no two destination records hold one primary key, and no two rows hold one identifier;
4. the next plan has zero changes, and the snapshot names each row's record in the destination.

Which rows are valid is decided here from the model alone (unique non-null key; an email no
lower key holds, unless the destination showed that row holding it before the run, where the
destination finds records by email), not read from the engine, so that a wrong verdict of the
engine is caught.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import requests
import yaml

from syncback.batches import LocalBatchStore
from syncback.commit import ReplayResult, replay
from syncback.delivery import RetryPolicy
from syncback.errors import GuardError
from syncback.planner import Planner, PlanResult
from syncback.runner import run_sync
from syncback.runtime import Runtime, new_run_id
from syncback.spec import load_project
from syncback.state import LocalStateStore, RunRecord
from syncback.warehouses.duckdb import DuckDBWarehouse
from tests.fakes.contract import Fake, fakes

NO_WAIT = RetryPolicy(attempts=2, base_s=0, cap_s=0)


@dataclass(frozen=True)
class Row:
    """One model row: the key, an email (an identifier where the destination finds records by it),
    and two plain fields."""

    email: str | None
    name: str | None = "Ann"
    score: int = 1
    seen: dt.datetime = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


class Killed(BaseException):
    """A process killed at this point: nothing after it runs (not even except clauses for Exception)."""


def mapping(order: int = 0, extra: bool = False) -> dict[str, Any]:
    """Return the sync's mapping; ``order`` lists the same entries another way, ``extra`` adds a field."""
    entries: list[tuple[str, Any]] = [
        ("email", "email"),
        ("customer_id", "customer_id"),
        ("firstname", "first_name"),
        ("lead_score", {"column": "lead_score", "transform": "integer"}),
        ("last_seen", {"column": "last_seen", "transform": "iso_date"}),
        ("source", {"value": "warehouse"}),
    ]
    if extra:
        entries.append(("score_text", {"column": "lead_score", "transform": "string"}))
    if order % 2:
        entries.reverse()
    return dict(entries)


def expected(key: int, row: Row, extra: bool, fake: Fake) -> dict[str, Any]:
    """Return the record the destination should hold for ``row``, as it stores it."""
    seen = row.seen.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record: dict[str, Any] = {
        "email": row.email,
        "customer_id": key,
        "firstname": row.name,
        "lead_score": row.score,
        "last_seen": seen,
        "source": "warehouse",
    }
    if extra:
        record["score_text"] = str(row.score)
    return {name: fake.stored(name, value) for name, value in record.items()}


@dataclass
class World:
    """A project, a destination fake and a model; runs, replays and kills are the test's to call."""

    root: Path
    kind: str  # a destination type with a fake under tests/fakes/
    mode: str  # "upsert" | "mirror"
    remove_not_created: str = "leave"
    rows: dict[int, Row] = field(default_factory=dict)
    order: int = 0
    extra: bool = False
    # records written by requests whose answer was lost that syncback cannot know of: ids the
    # destination made, records made by hand the write found by its identifier, or webhook keys
    lost: set[str] = field(default_factory=set)
    by_hand: set[str] = field(default_factory=set)  # ids of records a person created
    fake: Fake = field(init=False)
    paused: bool = False  # run_paused_before_commit's run got to its commit

    def __post_init__(self) -> None:
        self.fake = fakes()[self.kind]()

    # ---- set-up ------------------------------------------------------------------------------

    @contextmanager
    def started(self) -> Iterator[World]:
        saved = {name: os.environ.get(name) for name in self.fake.env}
        os.environ.update(self.fake.env)
        try:
            with self.fake:
                self.write_spec()
                yield self
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def write_spec(self) -> None:
        spec: dict[str, Any] = {
            "name": "people",
            "warehouse": "local",
            "table": "analytics.people",
            "primary_key": "customer_id",
            "mode": self.mode,
            "destination": self.fake.destination(),
            "mapping": self.fake.mapping(mapping(self.order, self.extra), "customer_id"),
            "batch_size": 3,
            "remove_not_created": self.remove_not_created,
        }
        if self.mode == "mirror":
            spec["guards"] = {"max_delete_pct": 100}
        (self.root / "syncs").mkdir(parents=True, exist_ok=True)
        (self.root / "syncback.yaml").write_text(
            yaml.safe_dump(
                {
                    "warehouses": {"local": {"type": "duckdb", "path": "wh.duckdb"}},
                    "state": {"warehouse": "local"},
                }
            )
        )
        (self.root / "syncs" / "people.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
        self.write_model()

    def write_model(self, rows: dict[int, Row] | None = None) -> None:
        rows = self.rows if rows is None else rows
        con = duckdb.connect(str(self.root / "wh.duckdb"))
        con.execute("create schema if not exists analytics")
        con.execute(
            "create or replace table analytics.people (customer_id integer, email varchar, first_name varchar, "
            "lead_score integer, last_seen timestamptz)"
        )
        for key, row in rows.items():
            con.execute(
                "insert into analytics.people values (?, ?, ?, ?, ?)",
                [key, row.email, row.name, row.score, row.seen],
            )
        con.close()

    def runtime(self) -> Runtime:
        project = load_project(self.root)
        return Runtime(
            project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path), retry=NO_WAIT
        )

    # ---- what the test does -------------------------------------------------------------------

    def run(self, full_resync: bool = False) -> RunRecord:
        return run_sync(self.runtime(), "people", full_resync)

    def replay(self) -> ReplayResult:
        rt = self.runtime()
        return replay(rt, "people", rt.state.dead_letters("people"))

    def plan(self) -> PlanResult:
        rt = self.runtime()
        sync = rt.project.sync("people")
        with rt.warehouse(sync) as warehouse:
            return Planner(sync, warehouse, rt.project.config.state.schema_).plan(new_run_id(), None)

    def reject(self, emails: set[str]) -> None:
        """Make the destination refuse the records holding any of ``emails`` (empty: accept all)."""
        self.fake.reject(emails)

    def create_by_hand(self, email: str) -> None:
        """A person creates a record (the sync did not create it: mirror must never archive it)."""
        self.by_hand.add(self.fake.create_by_hand(email))

    # ---- what the destination holds -------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Return the destination's live records (with "id")."""
        return self.fake.records()

    def snapshot(self) -> dict[str, tuple[str | None, str | None]]:
        """Return the live snapshot rows: key → (row hash, destination id)."""
        warehouse = DuckDBWarehouse(self.root / "wh.duckdb")
        try:
            if not warehouse.fetch_all(
                "select 1 from information_schema.tables "
                "where table_schema = 'syncback' and table_name = 'snapshot__people'"
            ):
                return {}  # no run has committed yet
            rows = warehouse.fetch_all(
                "select key, row_hash, destination_id from syncback.snapshot__people where not removed"
            )
        finally:
            warehouse.close()
        return {key: (h, d) for key, h, d in rows}

    @contextmanager
    def run_paused_before_commit(self) -> Iterator[list[BaseException]]:
        """Run the sync in a thread that stops once it has delivered, before its commit; the block
        runs while it waits (when it got there), then the run commits. Yields a list that holds
        the run's error, if it ended in one, once the block is left."""
        import syncback.runner as runner_module

        delivered, go_on = threading.Event(), threading.Event()
        real_commit = runner_module.commit_run
        errors: list[BaseException] = []

        def paused_commit(*args: Any, **kwargs: Any) -> Any:
            delivered.set()
            go_on.wait(10)
            return real_commit(*args, **kwargs)

        def run() -> None:
            try:
                self.run()
            except BaseException as exc:
                errors.append(exc)

        runner_module.commit_run = paused_commit  # type: ignore[assignment]
        thread = threading.Thread(target=run)
        try:
            thread.start()
            self.paused = delivered.wait(10)
            yield errors
        finally:
            go_on.set()
            thread.join(20)
            runner_module.commit_run = real_commit  # type: ignore[assignment]

    # ---- cutting a run off --------------------------------------------------------------------

    @contextmanager
    def killed_at(self, point: str, after: int = 0) -> Iterator[None]:
        """Raise ``Killed`` at ``point`` (the ``after``-th time it is reached): "answer" (the
        destination did the request, its answer is lost), "commit" (delivered, nothing committed),
        "snapshot" (mid-transaction), "record" (snapshot committed, run not recorded)."""
        import syncback.commit as commit_module
        import syncback.runner as runner_module
        import syncback.snapshot as snapshot_module

        count = {"n": 0}

        def due() -> bool:
            count["n"] += 1
            return count["n"] > after

        patches: list[tuple[Any, str, Any]] = []
        if point == "answer":
            real_send = requests.Session.send

            def send(
                session: requests.Session, request: requests.PreparedRequest, **kwargs: Any
            ) -> requests.Response:
                writes = self.fake.writes(request)
                before = {o["id"]: o for o in self.records()} if writes else {}
                response = real_send(session, request, **kwargs)
                if writes and due():
                    self.lost |= self.fake.lost(request, response, set(before))
                    # a record made by hand that the request wrote: syncback never knew its id
                    after = {o["id"]: o for o in self.records()}
                    self.lost |= {i for i in self.by_hand & set(after) if after[i] != before.get(i)}
                    raise Killed(point)
                return response

            patches.append((requests.Session, "send", send))
        elif point == "commit":
            real_commit = runner_module.commit_run

            def commit(*args: Any, **kwargs: Any) -> RunRecord:
                if due():
                    raise Killed(point)
                return real_commit(*args, **kwargs)

            patches.append((runner_module, "commit_run", commit))
        elif point == "snapshot":
            real_merge = snapshot_module._merge

            def merge(warehouse: Any, *args: Any) -> int:
                real_execute = warehouse.execute

                def execute(sql: str, params: Any = ()) -> None:
                    if sql == "commit" and due():
                        raise Killed(point)
                    real_execute(sql, params)

                warehouse.execute = execute
                try:
                    return real_merge(warehouse, *args)
                finally:
                    warehouse.execute = real_execute

            patches.append((snapshot_module, "_merge", merge))
        elif point == "record":
            real_record = LocalStateStore.record_run

            def record_run(store: LocalStateStore, run: RunRecord) -> None:
                if due():
                    raise Killed(point)
                real_record(store, run)

            patches.append((LocalStateStore, "record_run", record_run))
        else:
            raise ValueError(point)
        del commit_module
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
        for obj, name, value in patches:
            setattr(obj, name, value)
        try:
            yield
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)


# ---- the property ---------------------------------------------------------------------------------


def winners(
    rows: dict[int, Row], held_before: dict[str, int], fake: Fake
) -> tuple[dict[int, Row], dict[int, str]]:
    """Return the valid rows, and why each other row is invalid, decided from the model alone.

    Where the destination finds records by email: among rows sharing one (compared trimmed, in
    lower case), the one whose record held it before the run wins, else the lowest key (as text);
    a row without an email is invalid. Elsewhere the key is enough: every row is valid.
    ``held_before``: email → key.
    """
    if fake.identifier is None:
        return dict(rows), {}
    invalid: dict[int, str] = {}
    groups: dict[str, list[int]] = {}
    for key, row in rows.items():
        ident = fake.identity(row.email)
        if not ident:
            invalid[key] = "empty email"
            continue
        groups.setdefault(ident, []).append(key)
    valid: dict[int, Row] = {}
    for ident, keys in groups.items():
        holder = held_before.get(ident)
        winner = holder if holder in keys else min(keys, key=str)  # keys compare as text in SQL
        valid[winner] = rows[winner]
        invalid.update({k: f"loses {ident} to {winner}" for k in keys if k != winner})
    return valid, invalid


def check_converged(
    world: World, record: RunRecord, held_before: dict[str, int], full_resync: bool = False
) -> None:
    """Assert the convergence property after ``record``, a run with the destination healthy."""
    valid, invalid = winners(world.rows, held_before, world.fake)
    finds_by_email = world.fake.identifier is not None
    rejected = {int(item["key"]) for item in record.rejected_sample}
    records = world.records()
    by_key: dict[int, list[dict[str, Any]]] = {}
    for item in records:
        if item.get("customer_id") not in (None, ""):
            by_key.setdefault(int(item["customer_id"]), []).append(item)
    explained = _rejections_explained(world, rejected, valid, by_key) if finds_by_email else set()
    assert rejected <= explained, f"records rejected on a healthy destination: {rejected - explained}"

    # 1. every valid row is there exactly once, with exactly its mapped values: the record the
    # snapshot names (where the key names the record, the only one with it); another record with its
    # key may only be one a killed request created and never told us about
    snap = world.snapshot()
    for key, row in valid.items():
        if key in explained:
            continue
        copies = by_key.get(key, [])
        if finds_by_email:
            assert str(key) in snap, f"row {key} is not in the snapshot after a clean run"
            mine = [r for r in copies if r["id"] == snap[str(key)][1]]
        else:
            mine = copies
        assert len(mine) == 1, (
            f"row {key}: its record is not in the destination ({copies}, snapshot {snap.get(str(key))})"
        )
        extra = [r for r in copies if r is not mine[0] and r["id"] not in world.lost]
        assert not extra, f"row {key} is in the destination more than once: {copies}"
        want = expected(key, row, world.extra, world.fake)
        got = {k: world.fake.stored(k, mine[0].get(k)) for k in want}
        assert got == want, f"row {key}: the destination holds {got}, the model says {want}"

    # 2. mirror: nothing else this sync created remains (a full resync leaves removals to the next
    # run); nothing it did not create was archived
    if world.mode == "mirror" and not full_resync:
        allowed = set(valid) | set(invalid)  # invalid rows keep what they last had
        for key, copies in by_key.items():
            made = [r for r in copies if r["id"] not in world.by_hand and r["id"] not in world.lost]
            assert key in allowed or not made, f"row {key} left the model, its record remains: {made}"
    if world.by_hand:
        alive = {o["id"] for o in world.records()}
        assert world.by_hand <= alive, f"contacts made by hand were archived: {world.by_hand - alive}"

    # 3. no primary key held by two records (but for those a lost answer made), no email by two rows
    for key, copies in by_key.items():
        kept = [r for r in copies if r["id"] not in world.lost]
        assert len(kept) <= 1, f"two records hold key {key}: {kept}"

    # 4. the next plan has nothing to do, and the snapshot names each valid row's record
    try:
        plan = world.plan()
    except GuardError:
        # mirror with no valid row left refuses to archive everything: by design, not a drift
        assert world.mode == "mirror" and not valid, "a guard stopped the plan after a clean run"
        return
    c = plan.counts
    # a full resync plans no removals: those wait for the next ordinary run
    pending = c.added + c.changed + (0 if full_resync else c.removed)
    assert pending == len(explained), f"a clean run left changes: {c} (explained rejections: {explained})"
    for key in valid:
        if key not in explained:
            assert str(key) in snap, f"row {key} is delivered but not in the snapshot"


def _rejections_explained(
    world: World, rejected: set[int], valid: dict[int, Row], by_key: dict[int, list[dict[str, Any]]]
) -> set[int]:
    """Return the rejected rows the destination was right to refuse: their email is held by a
    record that no valid row owns (one this sync left behind in upsert mode, or made by hand)."""
    owners = {r["id"] for key in valid for r in by_key.get(key, [])}
    explained = set()
    for key in rejected:
        email = world.fake.identity(valid[key].email) if key in valid else None
        holders = [
            r
            for r in world.records()
            if world.fake.identity(r.get("email")) == email and r["id"] not in owners
        ]
        if holders:
            explained.add(key)
    return explained


def held_emails(world: World) -> dict[str, int]:
    """Return email → key of the records that hold one now (where the destination finds records by email)."""
    out: dict[str, int] = {}
    known = {dest for _, dest in world.snapshot().values()}
    for item in world.records():
        if item["id"] in world.lost and item["id"] not in known:
            # made by a request whose answer was lost, and not found by a later write: syncback
            # cannot know it holds the email
            continue
        if item.get("email") and item.get("customer_id") not in (None, ""):
            out[world.fake.identity(item["email"])] = int(item["customer_id"])
    return out if world.fake.identifier is not None else {}


Step = Callable[[World], None]
