"""Serverless costs: each handler module's cold import time, and the size of the built layer.

Import time is ``python -X importtime -c "import app"`` in a fresh interpreter, run from the
handler's folder with the environment the template gives it (tracing off, its default): the
cumulative time of ``app``, the
median of 3 runs after one that warms the file cache and the .pyc files (as a deployed layer
that ships them would be). The layer is measured only if ``sam build`` has left .aws-sam/build.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import ROOT

RUNS = 3
ENV = {
    "BATCH_BUCKET": "bench-batches",
    "RUNS_TABLE": "bench-runs",
    "DEAD_LETTER_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/bench-dlq",
    "STATE_MACHINE_ARN": "arn:aws:states:eu-west-1:123456789012:stateMachine:bench",
    "AWS_DEFAULT_REGION": "eu-west-1",
    # the template's default (TracingEnabled false): the X-Ray SDK is not imported
    "POWERTOOLS_TRACE_DISABLED": "true",
    "PYDANTIC_DISABLE_PLUGINS": "__all__",
}


def import_ms(folder: Path) -> tuple[float, list[tuple[str, float]]]:
    """Return the cumulative ms of ``import app`` in ``folder``, and its heaviest direct imports."""
    env = {**os.environ, **ENV}
    samples, heaviest = [], []
    for run in range(RUNS + 1):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import app"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rows = [line.split("|") for line in out.stderr.splitlines() if line.startswith("import time:")]
        rows = [(name, int(cumulative)) for _, cumulative, name in rows[1:]]  # the first is the header
        if run:
            samples.append(rows[-1][1] / 1000)
            # " app" is at the top level; what it imports itself is indented two more spaces
            top = [(n.strip(), us / 1000) for n, us in rows if n.startswith("   ") and n[3] != " "]
            heaviest = sorted(top, key=lambda item: -item[1])[:3]
    return statistics.median(samples), heaviest


def layer_mb() -> float | None:
    """Return the unzipped size of the built layer(s), or None if nothing is built."""
    build = ROOT / ".aws-sam" / "build"
    if not build.is_dir() and shutil.which("sam"):
        subprocess.run(["sam", "build"], cwd=ROOT, check=True, capture_output=True)
    if not build.is_dir():
        return None
    layers = [d for d in build.iterdir() if d.is_dir() and (d / "python").is_dir()]
    total = sum(f.stat().st_size for d in layers for f in d.rglob("*") if f.is_file())
    return total / 1e6 if layers else None


def measure() -> dict[str, Any]:
    handlers = {}
    for app in sorted((ROOT / "functions").glob("*/app.py")):
        ms, heaviest = import_ms(app.parent)
        handlers[app.parent.name] = {"ms": ms, "heaviest": heaviest}
    return {"handlers": handlers, "layer_mb": layer_mb(), "sam": shutil.which("sam") is not None}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
