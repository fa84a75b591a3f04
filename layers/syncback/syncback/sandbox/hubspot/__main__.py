"""``python -m syncback.sandbox.hubspot [OPTIONS]``: the sandbox's command line."""

from __future__ import annotations

from syncback.sandbox.hubspot import main

raise SystemExit(main())
