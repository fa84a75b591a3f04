"""Salesforce Bulk API 2.0 ingest jobs, for syncs whose batches are larger than ``bulk_above``.

A job per slice of a batch: ``POST /jobs/ingest`` (upsert by the External ID field, update or
delete by Salesforce id), ``PUT .../batches`` with the records as CSV, ``PATCH`` its state to
``UploadComplete``; then polled (``GET /jobs/ingest/{id}``: ``Open``, ``UploadComplete``,
``InProgress``, then ``JobComplete``, ``Failed`` or ``Aborted``) and, once complete, its
``successfulResults`` (``sf__Id``, ``sf__Created``), ``failedResults`` (``sf__Id``, ``sf__Error``)
and ``unprocessedrecords`` read, each CSV echoing the records sent, in no particular order: each
row is matched back to its change by the external ID (upserts) or the id (updates, deletes).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from syncback.destinations.base import Change, JobFailed, Outcome
from syncback.destinations.salesforce.client import OrgClient, _json

#: Bulk's way of clearing a field: an empty cell leaves it as it is
CLEAR = "#N/A"


class SalesforceBulk(OrgClient):
    """Writes one sync's records to one Salesforce object in Bulk API 2.0 ingest jobs."""

    max_jobs = 5

    def __init__(self, *args: Any, max_batch_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_batch_size = max_batch_size
        self.poll_s = self.config.poll_s
        self._jobs = f"/services/data/v{self.config.api_version}/jobs/ingest"

    def submit(self, changes: Sequence[Change], scope: str = "") -> str:
        first = changes[0]
        if first.destination_id is None and first.action != "upsert":
            return "-"  # clear or release a record we hold no id of, archive one: nothing to do
        job: dict[str, Any] = {"object": self.config.object, "contentType": "CSV", "lineEnding": "LF"}
        if first.action == "archive":
            job["operation"] = "delete"
        elif first.destination_id is not None:
            job["operation"] = "update"
        else:
            job["operation"] = "upsert"
            job["externalIdFieldName"] = self.config.external_id_field
        created = self.request("POST", self._jobs, changes, json=job)
        job_id = str(_json(created).get("id", ""))
        upload = self.request(
            "PUT",
            f"{self._jobs}/{job_id}/batches",
            changes,
            data=to_csv(changes, job["operation"]).encode(),
            headers={"Content-Type": "text/csv"},
        )
        if upload.status_code != 201:
            raise JobFailed(f"Salesforce took no data for job {job_id} ({upload.status_code})")
        self.request("PATCH", f"{self._jobs}/{job_id}", changes, json={"state": "UploadComplete"})
        return job_id

    def results(self, jobs: Sequence[tuple[str, Sequence[Change]]]) -> list[list[Outcome] | JobFailed | None]:
        return [self._job(job, changes) for job, changes in jobs]

    def _job(self, job: str, changes: Sequence[Change]) -> list[Outcome] | JobFailed | None:
        if job == "-":
            return [
                Outcome(c.key, "skipped", reason="no Salesforce id was recorded for this record")
                for c in changes
            ]
        info = _json(self.request("GET", f"{self._jobs}/{job}", changes))
        state = info.get("state")
        if state in ("Open", "UploadComplete", "InProgress"):
            return None
        if state != "JobComplete":
            return JobFailed(
                f"Salesforce job {job} ended {state}: {str(info.get('errorMessage') or '')[:200]}"
            )
        by_ref = {self._ref(c): c for c in changes}
        outcomes: dict[str, Outcome] = {}
        for kind in ("successfulResults", "failedResults", "unprocessedrecords"):
            text = self.request("GET", f"{self._jobs}/{job}/{kind}/", changes).text
            for row in csv.DictReader(io.StringIO(text)):
                change = by_ref.get(self._ref_of_row(row, changes[0]))
                if change is not None:
                    outcomes[change.key] = self._outcome(kind, row, change)
        return [
            outcomes.get(c.key)
            or Outcome(c.key, "rejected", reason="Salesforce's job did not report this record")
            for c in changes
        ]

    def _ref(self, change: Change) -> str:
        """Return what a result row names ``change`` by: its id, or its external ID as sent."""
        if change.destination_id is not None:
            return str(change.destination_id)
        return cell(change.record.get(self.config.external_id_field)).lower()

    def _ref_of_row(self, row: dict[str, str], sample: Change) -> str:
        if sample.destination_id is not None:
            return row.get("sf__Id") or row.get("Id") or ""
        return str(row.get(self.config.external_id_field, "")).lower()

    def _outcome(self, kind: str, row: dict[str, str], change: Change) -> Outcome:
        if kind == "successfulResults":
            created = row.get("sf__Created", "").lower() == "true"
            return Outcome(
                change.key, "delivered", row.get("sf__Id") or change.destination_id, created=created
            )
        if kind == "unprocessedrecords":
            return Outcome(
                change.key, "undelivered", reason="Salesforce did not process it; the next run sends it"
            )
        error = row.get("sf__Error", "") or "failed without a reason"
        if error.startswith("UNABLE_TO_LOCK_ROW"):
            return Outcome(change.key, "undelivered", reason="UNABLE_TO_LOCK_ROW: the next run sends it")
        if error.startswith("ENTITY_IS_DELETED") and change.action == "archive":
            return Outcome(change.key, "delivered", change.destination_id, created=False)
        if error.startswith("ENTITY_IS_DELETED") and change.destination_id is not None:
            # deleted in Salesforce since: the delivery writes it again by its external ID
            return Outcome(change.key, "gone", reason="ENTITY_IS_DELETED: deleted in Salesforce")
        from syncback.destinations.http import redact

        return Outcome(change.key, "rejected", reason=redact(error, [change])[:500])


def to_csv(changes: Sequence[Change], operation: str) -> str:
    """Return the changes as Bulk's CSV: a header of every field, ``Id`` first for updates and
    deletes, RFC 4180 quoting (quotes, commas, line breaks), ``#N/A`` to clear a field."""
    if operation == "delete":
        columns = ["Id"]
    else:
        fields = sorted({name for c in changes for name in c.record})
        columns = ["Id", *fields] if operation == "update" else fields
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for change in changes:
        values = {**change.record, "Id": change.destination_id}
        writer.writerow([cell(values[name]) if name in values else "" for name in columns])
    return out.getvalue()


def cell(value: Any) -> str:
    """Return one value as a CSV cell: null clears (``#N/A``), booleans lower case, the rest as text."""
    if value is None:
        return CLEAR
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
