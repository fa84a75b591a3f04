"""OpenLineage run events: each run's start and end as a ``RunEvent``, the model's tables as input
datasets and the destination's object as the output, sent to an OpenLineage endpoint or written to
a file (``lineage:`` in ``syncback.yaml``).

Only names leave: tables, the destination's object, the mapped field names and the counts, never a
value. Sending never fails a run: an endpoint that is down or refuses is logged, and the run goes on.
The client (``openlineage-python``) is imported only when a project asks for lineage.
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from syncback.destinations.registry import kind_of

if TYPE_CHECKING:
    from pathlib import Path

    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import RunEvent

    from syncback.secrets import SecretResolver
    from syncback.spec import LineageConfig, Project, SyncSpec
    from syncback.state import RunRecord

log = logging.getLogger("syncback")

PRODUCER = "urn:syncback:0.1.0"
#: a run's status → the event type it sends; a skipped run never started and sends nothing
EVENT_TYPES = {
    "running": "START",
    "succeeded": "COMPLETE",
    "partial": "COMPLETE",
    "failed": "FAIL",
    "cancelled": "ABORT",
}


def emit(project: Project, record: RunRecord, secrets: SecretResolver) -> None:
    """Send the OpenLineage event of ``record``'s run, if the project asks for lineage."""
    config = project.config.lineage
    if config is None or record.status not in EVENT_TYPES or record.sync not in project.syncs:
        return
    try:
        _client(config, project.root, secrets).emit(run_event(project, record, config.namespace))
    except Exception as exc:  # lineage is a record of the run, never a reason for it to fail
        log.warning(
            "lineage event not sent",
            extra={"sync": record.sync, "run_id": record.run_id, "error": f"{type(exc).__name__}: {exc}"},
        )


def run_id(sync: str, run: str) -> str:
    """Return the OpenLineage run id (a UUID) of a syncback run: the same for its start and end."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"syncback:{sync}:{run}"))


def run_event(project: Project, record: RunRecord, namespace: str) -> RunEvent:
    """Return the ``RunEvent`` of a run as ``record`` stands."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import (
        job_type_job,
        output_statistics_output_dataset,
        ownership_job,
        schema_dataset,
        sql_job,
    )

    sync = project.sync(record.sync)
    kind = EVENT_TYPES[record.status]
    job_facets: dict[str, Any] = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="SYNCBACK", jobType="SYNC"
        ),
        "sql": sql_job.SQLJobFacet(query=sync.model_sql),
    }
    if sync.owner:
        job_facets["ownership"] = ownership_job.OwnershipJobFacet(
            owners=[ownership_job.Owner(name=sync.owner)]
        )
    fields = [schema_dataset.SchemaDatasetFacetFields(name=name) for name in sync.mapping]
    output_facets: dict[str, Any] = {}
    if kind != "START":
        output_facets["outputStatistics"] = (
            output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=record.delivered)
        )
    source = _warehouse_namespace(project, sync)
    destination_namespace, destination_name = _destination(sync)
    return RunEvent(
        eventType=getattr(RunState, kind),
        eventTime=(record.finished_at if kind != "START" else "") or record.started_at,
        run=Run(runId=run_id(record.sync, record.run_id)),
        job=Job(namespace=namespace, name=record.sync, facets=job_facets),
        producer=PRODUCER,
        inputs=[InputDataset(namespace=source, name=name) for _, name in sync.tables_read()],
        outputs=[
            OutputDataset(
                namespace=destination_namespace,
                name=destination_name,
                facets={"schema": schema_dataset.SchemaDatasetFacet(fields=fields)},
                outputFacets=output_facets,
            )
        ],
    )


def _warehouse_namespace(project: Project, sync: SyncSpec) -> str:
    """Return the input datasets' namespace, as OpenLineage names a warehouse."""
    config = project.config.warehouses[sync.warehouse]
    if config.type == "snowflake":
        return f"snowflake://{config.account.lower()}"
    return f"duckdb://{(project.root / config.path).resolve()}"


def _destination(sync: SyncSpec) -> tuple[str, str]:
    """Return the output dataset's namespace (the destination and its host) and name (its object,
    or the address where a destination has no objects)."""
    kind = kind_of(sync)
    address = (kind.account(sync.destination).split() or [""])[0]  # every account begins with its address
    host = urlsplit(address).netloc or sync.destination.type
    name = str(next(iter(kind.place(sync.destination)), "") or address)
    return f"{sync.destination.type}://{host}", name


@functools.cache
def _client_for(url: str | None, file: str | None, token: str | None) -> OpenLineageClient:
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.file import FileConfig, FileTransport
    from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport

    if file is not None:
        return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=file, append=True)))
    assert url is not None
    retry = {
        "total": 2,
        "backoff_factor": 0.3,
        "status_forcelist": [500, 502, 503, 504],
        "allowed_methods": ["POST"],
    }
    config = HttpConfig(url=url, timeout=5.0, retry=retry)
    if token:
        config.auth = ApiKeyTokenProvider({"apiKey": token})
    return OpenLineageClient(transport=HttpTransport(config))


def _client(config: LineageConfig, root: Path, secrets: SecretResolver) -> OpenLineageClient:
    token = secrets.resolve(config.api_key, "syncback.yaml: lineage.api_key") if config.api_key else None
    file = str(root / config.file) if config.file else None
    return _client_for(config.url, file, token)
