"""``syncback sandbox hubspot`` and ``python -m syncback.sandbox.hubspot``: serve a sandbox until stopped."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from .faults import Faults
from .rules import DEFAULT_UNIQUE_PROPERTIES


def _parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncback sandbox hubspot", description=description)
    add = parser.add_argument
    add("--port", type=int, default=8099, help="0 picks a free port")
    add("--host", default="127.0.0.1")
    add("--token", help="the only accepted bearer token (default: any)")
    add("--db", help="SQLite file that keeps objects across restarts (default: memory)")
    add("--requests-per-window", type=int, default=100, help="0 means no limit")
    add("--window-seconds", type=float, default=10.0)
    add("--daily-limit", type=int)
    add("--unique", action="append", default=[], metavar="TYPE=PROPERTY", help="unique property of a type")
    for name in ("429", "5xx", "423", "timeout", "reset"):
        add(f"--rate-{name}", type=float, default=0.0, help=f"fraction of batch writes answered with {name}")
    add("--timeout-seconds", type=float, default=5.0)
    add("--slow-rate", type=float, default=0.0)
    add("--slow-seconds", type=float, default=0.5)
    add("--retry-after-429", type=float, help="send Retry-After on injected 429s")
    add("--reject", action="append", default=[], metavar="VALUE", help="reject inputs holding VALUE (207)")
    add(
        "--fail-batch", action="append", default=[], metavar="VALUE", help="fail requests holding VALUE (400)"
    )
    add("--seed", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve a sandbox until SIGINT or SIGTERM; return the exit code."""
    # the class is looked up on the package at call time: bench/sandbox_plus.py swaps in a subclass there
    from syncback.sandbox import hubspot

    args = _parser(str(hubspot.__doc__).splitlines()[0]).parse_args(argv)
    faults = Faults(
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        rate_423=args.rate_423,
        rate_timeout=args.rate_timeout,
        rate_reset=args.rate_reset,
        timeout_seconds=args.timeout_seconds,
        slow_rate=args.slow_rate,
        slow_seconds=args.slow_seconds,
        retry_after_429=args.retry_after_429,
        reject_values=set(args.reject),
        fail_batch_values=set(args.fail_batch),
        seed=args.seed,
    )
    unique = dict(DEFAULT_UNIQUE_PROPERTIES)
    unique.update(pair.split("=", 1) for pair in args.unique)
    sandbox = hubspot.HubSpotSandbox(
        port=args.port,
        host=args.host,
        token=args.token,
        requests_per_window=args.requests_per_window or None,
        window_seconds=args.window_seconds,
        daily_limit=args.daily_limit,
        db_path=args.db,
        faults=faults,
        unique_properties=unique,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    with sandbox:
        print(f"HubSpot sandbox listening on {sandbox.url}", flush=True)
        while not stopping.wait(0.2):
            pass
    return 0
