"""Serverless costs: each handler's cold import time, as deployed, and the size of the built layer.

Import time is ``python -X importtime -c "import app"`` in a fresh interpreter with the environment
the template gives the functions (tracing off, its default): the cumulative time of ``app``, the
median of 3 runs after one that warms the file cache. As deployed: ``sam build`` into
bench/work/sam-build, then each function's built folder with the built layer on its path, no
site-packages (``-S``) and no .pyc written (Lambda's /opt is read-only, so a cold start has only
the .pyc files the layer ships). Without the SAM CLI, the source tree in this venv (its .pyc warm).
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

BUILD = ROOT / "bench" / "work" / "sam-build"
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


def import_ms(folder: Path, layer: Path | None) -> tuple[float, list[tuple[str, float]]]:
    """Return the cumulative ms of ``import app`` in ``folder`` (with ``layer`` as /opt/python
    would be, else this venv), and its heaviest direct imports."""
    env = {**os.environ, **ENV}
    command = [sys.executable, "-X", "importtime", "-c", "import app"]
    if layer is not None:
        env.update(PYTHONPATH=str(layer), PYTHONDONTWRITEBYTECODE="1")
        command.insert(1, "-S")
    samples, heaviest = [], []
    for run in range(RUNS + 1):
        out = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=True)
        rows = [line.split("|") for line in out.stderr.splitlines() if line.startswith("import time:")]
        rows = [(name, int(cumulative)) for _, cumulative, name in rows[1:]]  # the first is the header
        if run:
            samples.append(rows[-1][1] / 1000)
            # " app" is at the top level; what it imports itself is indented two more spaces
            top = [(n.strip(), us / 1000) for n, us in rows if n.startswith("   ") and n[3] != " "]
            heaviest = sorted(top, key=lambda item: -item[1])[:3]
    return statistics.median(samples), heaviest


def built() -> bool:
    """Build the stack as ``sam build`` does for a deploy; return whether it could."""
    if not shutil.which("sam"):
        return False
    shutil.rmtree(BUILD, ignore_errors=True)
    subprocess.run(["sam", "build", "--build-dir", str(BUILD)], cwd=ROOT, check=True, capture_output=True)
    return True


def layer_mb() -> float:
    """Return the unzipped size of the built layers."""
    layers = [d for d in BUILD.iterdir() if d.is_dir() and (d / "python").is_dir()]
    return sum(f.stat().st_size for d in layers for f in d.rglob("*") if f.is_file()) / 1e6


def measure() -> dict[str, Any]:
    deployed = built()
    handlers = {}
    for app in sorted((ROOT / "functions").glob("*/app.py")):
        name = app.parent.name
        if deployed:
            ms, heaviest = import_ms(
                BUILD / f"{name.capitalize()}Function", BUILD / "SyncbackLayer" / "python"
            )
        else:
            ms, heaviest = import_ms(app.parent, None)
        handlers[name] = {"ms": ms, "heaviest": heaviest}
    return {"handlers": handlers, "layer_mb": layer_mb() if deployed else None, "deployed": deployed}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
