"""Run drt's CLI with its HubSpot API base pointed at the sandbox (``DRT_HUBSPOT_BASE``).

drt's HubSpot destination has no base-URL setting: the API root is the module constant
``drt.destinations.hubspot._HUBSPOT_API``. Run with drt's own Python, as ``drt`` would be.
"""

from __future__ import annotations

import os
import sys

from drt.cli.main import app
from drt.destinations import hubspot

base = os.environ["DRT_HUBSPOT_BASE"].rstrip("/")
hubspot._HUBSPOT_API = f"{base}/crm/v3/objects"
hubspot._HUBSPOT_PROPERTIES_API = f"{base}/crm/v3/properties"

if __name__ == "__main__":
    sys.argv[0] = "drt"
    sys.exit(app())
