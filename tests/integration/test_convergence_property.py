"""The destination always ends equal to the model: a stateful property test that searches for cases.

Hypothesis drives random sequences of what happens to a sync in ordinary use (rows inserted,
changed and deleted; emails that change, collide by case or white space, and leave; the model
coming back empty once; the mapping reordered or grown; another process time zone; the destination
rejecting records and then accepting them; replays at any moment, during a run and two at once;
a process killed at any point; full resyncs) against the real engine and every destination's fake
over loopback, and checks the property (``tests/convergence.py``) after every
clean run. ``make test`` runs a few sequences; ``make soak`` runs thousands
(``SYNCBACK_SOAK_EXAMPLES``). Every sequence it ever failed on is a named test in
``test_convergence_cases.py``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from syncback.errors import GuardError, RunInProgress
from tests.convergence import Killed, Row, World, check_converged, held_emails
from tests.fakes.contract import fakes

KEYS = st.integers(min_value=1, max_value=7)
EMAILS = st.sampled_from(
    ["a@x.io", " A@x.io", "b@x.io", "B@X.IO ", "c@x.io", "d@x.io", "e@x.io", "f@x.io", ""]
)
NAMES = st.sampled_from(["Ann", "Bob", "Zoë ✓", None])
SCORES = st.integers(min_value=0, max_value=3)
POINTS = st.sampled_from(["answer", "commit", "snapshot", "record"])

SOAK = int(os.environ.get("SYNCBACK_SOAK_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=SOAK or 12,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not SOAK,  # make test is repeatable; the soak explores
)


class Convergence(RuleBasedStateMachine):
    kind: str  # the destination, set per test case below

    def __init__(self) -> None:
        super().__init__()
        self._folder = tempfile.TemporaryDirectory()
        self._env = dict(os.environ)
        self.world: World | None = None
        self._context: Any = None

    @initialize(mirror=st.booleans(), clear=st.booleans(), rows=st.dictionaries(KEYS, EMAILS, max_size=4))
    def start(self, mirror: bool, clear: bool, rows: dict[int, str]) -> None:
        world = World(
            Path(self._folder.name),
            self.kind,
            "mirror" if mirror else "upsert",
            "clear_fields" if clear else "leave",
            rows={k: Row(e) for k, e in rows.items()},
        )
        self._context = world.started()
        self.world = self._context.__enter__()
        if self.world.fake.by_hand:
            self.world.create_by_hand("c@x.io")  # a record a person made: mirror must never archive it

    def teardown(self) -> None:
        try:
            if self.world is not None and not self._failed():
                self.clean_run(full=False, zone="UTC")  # every sequence ends with a clean run and the check
        finally:
            self._close()

    def _failed(self) -> bool:
        import sys

        return sys.exc_info()[0] is not None

    def _close(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
        self._folder.cleanup()
        os.environ.clear()
        os.environ.update(self._env)
        time.tzset()

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    # ---- the model changes ---------------------------------------------------------------------

    @rule(key=KEYS, email=EMAILS, name=NAMES, score=SCORES)
    def put_row(self, key: int, email: str, name: str | None, score: int) -> None:
        self.w.rows[key] = Row(email, name, score)
        self.w.write_model()

    @precondition(lambda self: self.world is not None and bool(self.world.rows))
    @rule(data=st.data(), email=EMAILS)
    def change_email(self, data: st.DataObject, email: str) -> None:
        key = data.draw(st.sampled_from(sorted(self.w.rows)))
        old = self.w.rows[key]
        self.w.rows[key] = Row(email, old.name, old.score, old.seen)
        self.w.write_model()

    @precondition(lambda self: self.world is not None and len(self.world.rows) >= 2)
    @rule(data=st.data(), fresh=EMAILS, leave=st.booleans())
    def hand_email_over(self, data: st.DataObject, fresh: str, leave: bool) -> None:
        """One row takes another's email; the other gets a new one, or leaves the model (or, with two
        rows giving each other theirs, a swap)."""
        giver, taker = data.draw(
            st.lists(st.sampled_from(sorted(self.w.rows)), min_size=2, max_size=2, unique=True)
        )
        rows = self.w.rows
        given, taken = rows[giver], rows[taker]
        rows[taker] = Row(given.email, taken.name, taken.score, taken.seen)
        if leave:
            del rows[giver]
        else:
            swap = data.draw(st.booleans())
            rows[giver] = Row(taken.email if swap else fresh, given.name, given.score, given.seen)
        self.w.write_model()

    @precondition(lambda self: self.world is not None and bool(self.world.rows))
    @rule(data=st.data(), flip=st.booleans())
    def change_value(self, data: st.DataObject, flip: bool) -> None:
        # B → A → B: the same two values, back and forth
        key = data.draw(st.sampled_from(sorted(self.w.rows)))
        old = self.w.rows[key]
        self.w.rows[key] = Row(old.email, "Bob" if flip else "Ann", old.score, old.seen)
        self.w.write_model()

    @precondition(lambda self: self.world is not None and bool(self.world.rows))
    @rule(data=st.data())
    def delete_row(self, data: st.DataObject) -> None:
        del self.w.rows[data.draw(st.sampled_from(sorted(self.w.rows)))]
        self.w.write_model()

    @rule(order=st.integers(0, 1), extra=st.booleans())
    def change_mapping(self, order: int, extra: bool) -> None:
        self.w.order, self.w.extra = order, extra
        self.w.write_spec()

    # ---- runs ----------------------------------------------------------------------------------

    @rule(full=st.booleans(), zone=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]))
    def clean_run(self, full: bool, zone: str) -> None:
        self.w.reject(set())
        held = held_emails(self.w)
        os.environ["TZ"] = zone
        time.tzset()
        try:
            record = self.w.run(full_resync=full)
        except GuardError as exc:
            assert "no rows" in str(exc) or "no valid rows" in str(exc), exc
            return
        finally:
            os.environ["TZ"] = "UTC"
            time.tzset()
        check_converged(self.w, record, held, full)

    @rule(emails=st.sets(EMAILS, min_size=1, max_size=2))
    def run_with_rejections(self, emails: set[str]) -> None:
        self.w.reject(emails)
        try:
            self.w.run()
        except GuardError:
            pass
        finally:
            self.w.reject(set())

    @rule(point=POINTS, after=st.integers(0, 2))
    def run_killed(self, point: str, after: int) -> None:
        try:
            with self.w.killed_at(point, after):
                self.w.run()
        except (Killed, GuardError):
            pass

    @precondition(lambda self: self.world is not None and bool(self.world.rows))
    @rule()
    def empty_model_once(self) -> None:
        self.w.write_model({})
        with contextlib.suppress(GuardError):
            self.w.run()
        self.w.write_model()

    # ---- replays -------------------------------------------------------------------------------

    @rule()
    def replay(self) -> None:
        self.w.replay()

    @rule()
    def replay_during_a_run(self) -> None:
        """A replay while a run has delivered and not yet committed must not go through."""
        with self.w.run_paused_before_commit() as errors:
            if self.w.paused:
                with pytest.raises(RunInProgress):
                    self.w.replay()
        assert not errors or isinstance(errors[0], GuardError), errors

    @rule()
    def two_replays_at_once(self) -> None:
        errors: list[BaseException] = []

        def replay() -> None:
            try:
                self.w.replay()
            except RunInProgress:
                pass  # the other replay holds the lock: this one did nothing
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=replay) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not errors, errors

    @invariant()
    def history_is_consistent(self) -> None:
        if self.world is None:
            return
        for run in self.w.runtime().state.runs("people", limit=1):
            planned = run.planned
            if planned and run.status != "skipped":
                total = planned["added"] + planned["changed"] + planned["removed"]
                assert total == run.delivered + run.rejected + run.skipped + run.undelivered, run


# one test case per destination fake: a new destination is searched without editing this file
for _name in fakes():
    _title = _name.title().replace("-", "")
    globals()[f"Test{_title}Convergence"] = type(
        f"{_title}Convergence", (Convergence,), {"kind": _name}
    ).TestCase
    globals()[f"Test{_title}Convergence"].settings = SETTINGS
del _name, _title
