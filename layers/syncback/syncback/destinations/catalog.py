"""The destinations syncback ships: every package under ``destinations/`` registers itself when
imported, and this module imports them all, so a new destination is a new package and nothing else."""

from __future__ import annotations

import importlib
import pkgutil

import syncback.destinations as _package
from syncback.destinations.registry import REGISTRY

for _found in pkgutil.iter_modules(_package.__path__):
    if _found.ispkg:
        importlib.import_module(f"{_package.__name__}.{_found.name}")

__all__ = ["REGISTRY"]
