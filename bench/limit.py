"""At the limit: the sandbox enforces a rolling window, the spec declares the same budget.

HubSpot's rule shape (N requests in any rolling window) scaled down so a run takes ~30 s:
20 requests per 1 s window, 100 records a request, so at most 2,000 records/s. Measured with
1 deliverer and with 4 sharing the one budget: the steady rate ÷ that ceiling, and the 429s the
sandbox sent. The steady rate leaves out the first window: a rolling window lets N requests go at
once at the start, so N windows' worth of requests are done in N-1 windows and a plain
records ÷ seconds overstates the rate by 1/(N-1). It is the records received after the first
window's N requests ÷ the time from the last of those to the last request (run_sync's progress hook).
"""

from __future__ import annotations

import json
import time
from typing import Any

from common import SYNC, fresh_project, sandbox
from overhead import runtime

from syncback.delivery import RateBudget
from syncback.runner import Progress, run_sync

REQUESTS, WINDOW_S, PER_REQUEST = 20, 1.0, 100
ROWS = 60_000  # 30 s at the ceiling
CEILING = REQUESTS * PER_REQUEST / WINDOW_S


class Clock(Progress):
    """Notes when each request's records were acknowledged."""

    def __init__(self) -> None:
        self.done: list[float] = []

    def advance(self, n: int) -> None:
        if n:
            self.done.append(time.perf_counter())

    def steady_rate(self) -> float:
        """Return records/s after the first window's burst (every request holds PER_REQUEST)."""
        first, last = self.done[REQUESTS - 1], self.done[-1]
        return (len(self.done) - REQUESTS) * PER_REQUEST / (last - first)


def at_the_limit(concurrency: int) -> dict[str, Any]:
    window = ("--requests-per-window", str(REQUESTS), "--window-seconds", str(WINDOW_S))
    with sandbox(*window) as box:
        root = fresh_project(
            f"limit-{concurrency}", ROWS, box.url, rate_limit=(REQUESTS, WINDOW_S), concurrency=concurrency
        )
        clock = Clock()
        started = time.perf_counter()
        record = run_sync(runtime(root), SYNC, progress=clock)
        wall = time.perf_counter() - started
        stats = box.stats()
    return {
        "concurrency": concurrency,
        "delivered": record.delivered,
        "run_s": wall,
        "of_ceiling": clock.steady_rate() / CEILING,
        "run_of_ceiling": record.delivered / wall / CEILING,
        "requests": stats["requests"],
        "rate_limited": stats["rate_limited"],
    }


def measure() -> dict[str, Any]:
    return {
        "requests_per_window": REQUESTS,
        "window_s": WINDOW_S,
        "ceiling_records_per_s": CEILING,
        # the budget widens the window by a margin: the most of the limit it can ever use
        "budget_bound": WINDOW_S / RateBudget(REQUESTS, WINDOW_S).window,
        "runs": [at_the_limit(c) for c in (1, 4)],
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
