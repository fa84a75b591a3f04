"""Run history, dead letters and the per-sync run lock; local files here, DynamoDB and SQS on AWS.

The snapshot itself lives in the warehouse (``snapshot.py``), beside the model.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from syncback.errors import RunInProgress


@dataclass
class RunRecord:
    """One run of one sync, as the history keeps it and the summary shows it."""

    sync: str
    run_id: str
    #: running | succeeded | partial (rejected or undelivered records) | failed | cancelled | skipped
    status: str
    started_at: str
    finished_at: str = ""
    duration_s: float = 0.0
    planned: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    rejected: int = 0
    skipped: int = 0
    undelivered: int = 0
    error: str | None = None
    invalid_sample: list[dict[str, Any]] = field(default_factory=list)
    rejected_sample: list[dict[str, Any]] = field(default_factory=list)
    #: what it delivered is in the snapshot (or it delivered nothing); an unsettled run that ended
    #: (killed, its commit failed) is committed by the next run of the sync before it plans
    settled: bool = True
    #: what started it: cli, schedule, queue, dbt, request (a direct call), replay
    trigger: str = ""
    #: data checks of severity warn that failed (``checks``), each with what it found
    warnings: list[str] = field(default_factory=list)

    @property
    def model_rows(self) -> int:
        """The rows the run read from the model (removed rows are not in it)."""
        return sum(self.planned.get(k, 0) for k in ("added", "changed", "unchanged", "invalid"))

    @property
    def records(self) -> int:
        """The records the run had to send, whatever became of each."""
        return self.delivered + self.rejected + self.skipped + self.undelivered

    @property
    def good(self) -> bool:
        """It ended well enough to count as a success for alerts: succeeded or partial."""
        return self.status in ("succeeded", "partial")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeadLetter:
    """A record the destination rejected, with its reason; enough to deliver it again."""

    sync: str
    run_id: str
    key: str
    action: str
    row_hash: str | None
    destination_id: str | None
    record: dict[str, Any]
    reason: str
    rejected_at: str
    version: int = 0  # the version of the record: a replay never writes over a newer one
    identity: str | None = None
    target: str = ""  # which destination it was for (destinations.destination_target)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class StateStore(Protocol):
    """Where run history and dead letters live, and the run lock that keeps one run per sync.

    ``acquire`` and ``release`` take the lock for a named owner (a run id), so that a run spanning
    several Lambda invocations can release what its first step took; ``lock`` holds it for a block
    of code in one process (the local runner). Implementations subclass this protocol to inherit it.
    """

    def record_run(self, run: RunRecord) -> None: ...

    def runs(self, sync: str | None = None, limit: int = 20) -> list[RunRecord]: ...

    def put_dead_letters(self, sync: str, letters: Iterable[DeadLetter]) -> None: ...

    def pending_letter_keys(self, sync: str) -> set[str]:
        """Return the keys of the sync's dead letters a commit may settle (empty where it cannot)."""
        ...

    def resolve_dead_letters(self, sync: str, keys: Iterable[str]) -> None: ...

    def dead_letters(self, sync: str) -> list[DeadLetter]: ...

    def acquire(self, sync: str, owner: str) -> None:
        """Take the run lock of ``sync`` for ``owner``; raise RunInProgress if another holds it."""
        ...

    def release(self, sync: str, owner: str) -> None:
        """Give the run lock of ``sync`` back, if ``owner`` still holds it."""
        ...

    @contextlib.contextmanager
    def lock(self, sync: str) -> Iterator[None]:
        """Hold the run lock of ``sync`` for the block; raise RunInProgress if another holds it."""
        owner = f"lock-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-{threading.get_ident()}"
        self.acquire(sync, owner)
        try:
            yield
        finally:
            self.release(sync, owner)


class LocalStateStore(StateStore):
    """JSON files under the project's state folder (``.syncback`` by default)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._held: dict[str, tuple[str, IO[str]]] = {}  # sync -> (owner, the flocked lock file)

    # ---- run history: one JSON line per finished run -------------------------------------------

    def record_run(self, run: RunRecord) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "runs.jsonl").open("a", encoding="utf-8") as out:
            out.write(json.dumps(run.to_json(), ensure_ascii=False) + "\n")

    def runs(self, sync: str | None = None, limit: int = 20) -> list[RunRecord]:
        path = self.root / "runs.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        records: dict[tuple[str, str], RunRecord] = {}
        for line in reversed(lines):  # a run recorded twice (a commit retried) counts once: the last
            if line.strip():
                record = RunRecord(**json.loads(line))
                records.setdefault((record.sync, record.run_id), record)
        return [r for r in records.values() if sync is None or r.sync == sync][:limit]

    # ---- dead letters: the latest rejection of each key ---------------------------------------

    def _letters_path(self, sync: str) -> Path:
        return self.root / "dlq" / f"{sync}.json"

    def _load(self, sync: str) -> dict[str, dict[str, Any]]:
        path = self._letters_path(sync)
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def _save(self, sync: str, letters: dict[str, dict[str, Any]]) -> None:
        path = self._letters_path(sync)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(letters, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    def put_dead_letters(self, sync: str, letters: Iterable[DeadLetter]) -> None:
        current = self._load(sync)
        changed = False
        for letter in letters:
            # one letter per key: the newest version's (a replay of an older one is stale anyway)
            if current.get(letter.key, {}).get("version", 0) <= letter.version:
                current[letter.key] = letter.to_json()
                changed = True
        if changed:
            self._save(sync, current)

    def resolve_dead_letters(self, sync: str, keys: Iterable[str]) -> None:
        current = self._load(sync)
        if not current:
            return
        for key in keys:
            current.pop(key, None)
        self._save(sync, current)

    def dead_letters(self, sync: str) -> list[DeadLetter]:
        return [DeadLetter(**item) for item in self._load(sync).values()]

    def pending_letter_keys(self, sync: str) -> set[str]:
        return set(self._load(sync))

    # ---- one run of a sync at a time ------------------------------------------------------

    def acquire(self, sync: str, owner: str) -> None:
        """Take the lock file of ``sync`` (flock: released by the OS if the process dies)."""
        path = self.root / "locks" / f"{sync}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunInProgress(
                f"sync {sync}: another run is in progress; this one was not started"
            ) from None
        self._held[sync] = (owner, handle)

    def release(self, sync: str, owner: str) -> None:
        held = self._held.get(sync)
        if held is None or held[0] != owner:
            return
        del self._held[sync]
        fcntl.flock(held[1], fcntl.LOCK_UN)
        held[1].close()
