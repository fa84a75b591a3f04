"""A local HubSpot CRM v3 objects API with HubSpot's limits, errors and injected faults.

The destination for the demo (``syncback sandbox hubspot``), the integration tests and the benchmarks;
never imported by production code. It does what HubSpot's documentation says (reference:
``destination-apis.md`` section 1); where the documentation is silent, a comment names the choice.

- writes: ``POST /crm/objects/{version}/{type}/batch/{upsert,create,update,archive}``, at most 100
  inputs (``{version}``: 2026-03 or 2026-09; the older ``/crm/v3/objects/...`` paths too);
- reads: ``GET /crm/objects/{version}/{type}/{id}[?idProperty=]``, ``GET .../{type}?limit=&after=``;
- admin, no auth: ``GET /_sandbox/stats``, ``POST /_sandbox/reset``, ``GET|POST /_sandbox/faults``,
  ``GET /_sandbox/objects/{type}``.

Objects live in memory; with ``db_path`` each request's changes are also committed to SQLite, and the
next sandbox opened on that file starts with them.

Modules: ``server`` (``HubSpotSandbox``, HTTP), ``access`` (tokens, rate limits), ``faults``, ``rules``
(the CRM API), ``validation`` (inputs), ``store`` (records, SQLite), ``responses``, ``stats``, ``cli``.
"""

from __future__ import annotations

# time and unquote too, as the single module had them: bench/sandbox_plus.py reaches them through here
import time as time
from urllib.parse import unquote as unquote

from .access import FORBIDDEN_TOKEN as FORBIDDEN_TOKEN
from .cli import main as main
from .faults import Faults as Faults
from .responses import _error as _error
from .responses import _Rejected as _Rejected
from .responses import _Response as _Response
from .rules import _LIST as _LIST
from .rules import _ONE as _ONE
from .rules import BATCH_LIMIT as BATCH_LIMIT
from .rules import DEFAULT_UNIQUE_PROPERTIES as DEFAULT_UNIQUE_PROPERTIES
from .rules import PORTAL_ID as PORTAL_ID
from .server import HubSpotSandbox as HubSpotSandbox
