"""The destinations syncback ships: importing this module registers each of them.

A new destination is a package beside these, and one line here.
"""

from __future__ import annotations

from syncback.destinations import hubspot, webhook  # noqa: F401  (registers on import)
from syncback.destinations.registry import REGISTRY

__all__ = ["REGISTRY"]
