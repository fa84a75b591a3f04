"""Why a run at the limit gets a 429: the lag between our budget's stamp and the sandbox's.

Not part of ``make bench``: ``python bench/limit_lag.py [CONCURRENCY]`` runs limit.py's sync once
with the budget's stamps and the sandbox's admissions logged on the same monotonic clock. The
budget stamps a request when it may start; the sandbox counts it once it has read it. A 429
comes when request k's lag exceeds the budget's cushion (its window minus the limit's) by more
than request k+N's lag.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from common import SYNC, WORK, fresh_project, sandbox
from limit import REQUESTS, ROWS, WINDOW_S
from overhead import runtime

from syncback.delivery import RateBudget
from syncback.runner import run_sync


class LoggedBudget(RateBudget):
    def __init__(self, requests: int, per_seconds: float) -> None:
        super().__init__(requests, per_seconds)
        self.stamps: list[float] = []

    def acquire(self) -> None:
        super().acquire()
        self.stamps.append(time.monotonic())  # within a few µs of the stamp the budget keeps


def main(concurrency: int) -> None:
    log = WORK / "admissions.txt"
    os.environ["SANDBOX_ADMISSIONS"] = str(log)
    budget = LoggedBudget(REQUESTS, WINDOW_S)
    window = ("--requests-per-window", str(REQUESTS), "--window-seconds", str(WINDOW_S))
    with sandbox(*window, module="sandbox_plus") as box:
        root = fresh_project("limit-lag", ROWS, box.url, (REQUESTS, WINDOW_S), concurrency)
        rt = runtime(root)
        rt.budget_factory = lambda account, requests, per_seconds: budget
        run_sync(rt, SYNC)
    admissions = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    lags = [at - stamp for (at, _, _), stamp in zip(admissions, sorted(budget.stamps), strict=True)]
    cushion = budget.window - WINDOW_S
    print(f"concurrency {concurrency}: {len(lags)} requests, cushion {cushion * 1000:.0f} ms")
    print(
        f"lag from budget stamp to sandbox count: median {statistics.median(lags) * 1000:.1f} ms, "
        f"max {max(lags) * 1000:.1f} ms; of it inside the sandbox at most "
        f"{max(a[2] for a in admissions) * 1000:.1f} ms"
    )
    for i, (_, admitted, _) in enumerate(admissions):
        if not admitted and i >= REQUESTS:
            print(f"429 on request {i}: request {i - REQUESTS} lagged {lags[i - REQUESTS] * 1000:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if sys.argv[1:] else 4)
