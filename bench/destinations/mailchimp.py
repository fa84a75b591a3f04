"""Mailchimp at its limit: members per second through batch subscribe, as a share of what the limit
allows.

Mailchimp's rule is 10 concurrent connections per API key, no per-minute quota, and at most 500
members a batch request. So the ceiling is 10 connections times 500 members per request latency. Here the test fake
answers every request after ``LATENCY_S`` (it runs in a process of its own, so its work does not
slow syncback's requests down), refuses an 11th connection with a 429, and syncback delivers 10
batches side by side (``concurrency: 10``, the most the spec allows). Every member is new, so each
request is one batch of 500 (an existing member costs one more request of its own, not measured
here). The figure is members/s from the first request to the last answer ÷ the ceiling, with the
429s the fake sent and the most connections it saw at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from syncback.batches import LocalBatchStore  # noqa: E402
from syncback.runner import Progress, run_sync  # noqa: E402
from syncback.runtime import Runtime  # noqa: E402
from syncback.spec import load_project  # noqa: E402
from syncback.state import LocalStateStore  # noqa: E402
from tests.conftest import contacts_rows, write_contacts  # noqa: E402
from tests.fakes.mailchimp import KEY, LIST, MailchimpFake  # noqa: E402

CONNECTIONS, LATENCY_S, MEMBERS, PER_REQUEST = 10, 0.5, 100_000, 500
BATCH = 10_000  # 10 batches of 20 requests: one for each of the 10 deliverers
CEILING = CONNECTIONS * PER_REQUEST / LATENCY_S


class Clock(Progress):
    """Notes when delivery started and when the last answer came."""

    def __init__(self) -> None:
        self.started = self.last = 0.0

    def start(self, total: int) -> None:
        self.started = time.perf_counter()

    def advance(self, n: int) -> None:
        if n:
            self.last = time.perf_counter()


class OwnProcess:
    """The fake in a process of its own (its CPU is not syncback's): its URL, then its counts."""

    def __enter__(self) -> OwnProcess:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.process.kill()

    def counts(self) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()  # the fake prints its counts when its input ends
        return dict(json.loads(self.process.stdout.readline()))


def serve() -> None:
    with MailchimpFake(max_connections=CONNECTIONS, latency_s=LATENCY_S) as fake:
        print(fake.url, flush=True)
        sys.stdin.read()
        print(json.dumps(fake.counts), flush=True)


def at_the_limit(concurrency: int) -> dict[str, Any]:
    root = ROOT / "bench" / "work" / f"mailchimp-{concurrency}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "syncs").mkdir(parents=True)
    with OwnProcess() as fake:
        (root / "syncback.yaml").write_text(
            yaml.safe_dump(
                {
                    "warehouses": {"local": {"type": "duckdb", "path": "wh.duckdb"}},
                    "state": {"warehouse": "local"},
                }
            )
        )
        sync = {
            "name": "members",
            "warehouse": "local",
            "table": "analytics.contacts",
            "primary_key": "customer_id",
            "batch_size": BATCH,
            "destination": {
                "type": "mailchimp",
                "list_id": LIST,
                "api_key": "env:BENCH_MAILCHIMP_KEY",
                "status_for_new": "pending",
                "base_url": fake.url,
                "concurrency": concurrency,
            },
            "mapping": {
                "email_address": "email",
                "merge_fields.FNAME": "first_name",
                "merge_fields.SCORE": "lead_score",
            },
        }
        (root / "syncs" / "members.yaml").write_text(yaml.safe_dump(sync))
        write_contacts(root / "wh.duckdb", contacts_rows(MEMBERS))
        os.environ["BENCH_MAILCHIMP_KEY"] = KEY
        project = load_project(root)
        rt = Runtime(project, LocalBatchStore(project.state_path), LocalStateStore(project.state_path))
        clock = Clock()
        started = time.perf_counter()
        record = run_sync(rt, "members", progress=clock)
        wall = time.perf_counter() - started
        counts = fake.counts()
    assert record.delivered == MEMBERS, record
    return {
        "concurrency": concurrency,
        "wall_s": wall,
        "of_ceiling": MEMBERS / (clock.last - clock.started) / CEILING,
        "requests": counts["requests"],
        "rate_limited": counts["429"],
        "most_connections": counts["most_connections"],
        "created": counts["created"],
    }


def main() -> None:
    run = at_the_limit(CONNECTIONS)
    what = (
        f"Mailchimp at its limit ({CONNECTIONS} connections, {LATENCY_S:g} s a request, ≤ {PER_REQUEST} "
        f"members a request), {run['concurrency']} deliverers"
    )
    rows = [
        [
            f"{what}: members/s ÷ limit",
            f"{run['of_ceiling']:.3f}",
            "≥ 0.9",
            "yes" if run["of_ceiling"] >= 0.9 else "**no**",
        ],
        [f"{what}: 429s", str(run["rate_limited"]), "0", "yes" if run["rate_limited"] == 0 else "**no**"],
    ]
    note = (
        f"{MEMBERS:,} new members in {run['requests']:,} requests, at most {run['most_connections']} "
        f"connections at once; whole run {run['wall_s']:.1f} s. The ceiling is {CEILING:,.0f} members/s "
        "(10 × 500 ÷ the fake's latency). Members that exist cost one PUT each after their batch "
        "(their status is never sent), so an update-heavy run is bound by 10 ÷ latency members/s."
    )
    print(json.dumps({"rows": rows, "note": note}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    else:
        main()
