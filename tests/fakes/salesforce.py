"""A Salesforce org on loopback, as Salesforce documents its REST API (a test fake: production code
never imports it).

- ``POST /services/oauth2/token``: ``client_credentials`` (client id and secret) or the JWT bearer
  flow (an RS256 assertion checked against the app's certificate key: iss the client id, sub the
  user, aud the login URL, not expired); answers ``access_token`` and ``instance_url`` (this server);
- sObject Collections under ``/services/data/vXX.X/composite/sobjects``: upsert by an External ID
  field (``PATCH .../{Object}/{Field}``), update by id (``PATCH``), delete (``DELETE ?ids=``); at
  most 200 records, ``allOrNone: false``, 200 with one result per record in request order
  (``id, success, created, errors: [{statusCode, message, fields}]``);
- a record holding a field the object lacks is a 400 ``INVALID_FIELD`` for the request; an unknown
  object a 404 ``NOT_FOUND``; an external ID held by two records makes that record fail;
- Bulk API 2.0 ingest jobs (``/services/data/vXX.X/jobs/ingest``): create (upsert by an External ID
  field, update, delete), upload CSV (201), close with ``UploadComplete``, then ``UploadComplete`` →
  ``InProgress`` → ``JobComplete`` as time passes, and ``successfulResults`` / ``failedResults`` /
  ``unprocessedrecords`` as CSV echoing the rows sent, shuffled (Salesforce keeps no order);
  ``#N/A`` clears a field, an empty cell leaves it;
- every answer carries ``Sforce-Limit-Info: api-usage=n/limit``; past ``daily_limit`` requests,
  403 ``REQUEST_LIMIT_EXCEEDED``; ``revoke()`` makes the tokens issued so far ``INVALID_SESSION_ID``.

Fault knobs: ``reject_values`` (``FIELD_CUSTOM_VALIDATION_EXCEPTION``), ``lock_values`` (records
holding them fail ``UNABLE_TO_LOCK_ROW`` that many times), and random 503s and answers too late
(after the write). ``FAKE`` is its view for the contract suites.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.contract import Knobs, RandomFaults
from tests.fakes.loopback import Answer, LoopbackServer

CLIENT_ID, CLIENT_SECRET, USERNAME = "3MVG9contract", "contract-consumer-secret", "sync@acme.example"
OBJECT, EXTERNAL_ID = "Customer__c", "Customer_Key__c"
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_KEY_PEM = _KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
_PATH = re.compile(r"^/services/data/v\d+\.\d/composite/sobjects(?:/(\w+)/(\w+))?$")
_BULK = re.compile(
    r"^/services/data/v\d+\.\d/jobs/ingest(?:/(\w+))?(?:/(batches|successfulResults|failedResults|unprocessedrecords)/?)?$"
)


class SalesforceFake(LoopbackServer, Knobs):
    """One org with custom object ``Customer__c`` (and ``Contact``), and its contract view."""

    name = "salesforce"
    env = {"CONTRACT_SF_SECRET": CLIENT_SECRET}

    def __init__(self, daily_limit: int = 1_000_000) -> None:
        self.daily_limit = daily_limit
        #: object -> the fields it has (an External ID field among them)
        self.objects: dict[str, set[str]] = {
            OBJECT: {
                EXTERNAL_ID,
                *(
                    f"{n}__c"
                    for n in (
                        "email",
                        "customer_id",
                        "firstname",
                        "lead_score",
                        "last_seen",
                        "source",
                        "score_text",
                        "score",
                        "big",
                    )
                ),
            },
            "Contact": {"LastName", "FirstName", "Email", "Lead_Score__c", "Customer_Key__c"},
        }
        self.store: dict[str, dict[str, Any]] = {}  # id -> {"type", "deleted", fields...}
        #: the External ID fields, and the live records by (object, field, value in lower case)
        self.external_ids = {EXTERNAL_ID}
        self._index: dict[tuple[str, str, str], set[str]] = {}
        self.reject_values: set[str] = set()
        self.lock_values: dict[str, int] = {}
        self.random_faults: RandomFaults | None = None
        self.late_s = 2.5
        self.counts = {"requests": 0, "created": 0, "tokens": 0, "locked": 0}
        self._tokens: set[str] = set()
        #: Bulk API 2.0 ingest jobs by id; how long a closed job stays UploadComplete, then InProgress
        self.bulk_jobs: dict[str, dict[str, Any]] = {}
        self.job_s = 0.02
        self._next = 1
        self._lock = threading.Lock()
        super().__init__()

    def revoke(self) -> None:
        """Make every token issued so far invalid (a session timeout, an admin revoking it)."""
        with self._lock:
            self._tokens.clear()

    def live(self, obj: str = OBJECT) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.store.values() if r["type"] == obj and not r["deleted"]]

    # ---- one request ---------------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        parts = urlsplit(target)
        with self._lock:
            if parts.path == "/services/oauth2/token" and method == "POST":
                return self._token({k: v[0] for k, v in parse_qs(body.decode()).items()})
            self.counts["requests"] += 1
            if headers.get("authorization", "").removeprefix("Bearer ") not in self._tokens:
                return self._errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
            if self.counts["requests"] > self.daily_limit:
                return self._errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            fault = self.random_faults.draw() if self.random_faults else None
            if fault in ("429", "5xx"):  # Salesforce answers no 429: its limits are daily
                return self._errors(503, "SERVER_UNAVAILABLE", "test fake answers 503")
            answer = self._route(method, parts.path, parse_qs(parts.query), body)
        if fault == "late":
            time.sleep(self.late_s)
        return answer

    def _token(self, form: dict[str, str]) -> Answer:
        ok = False
        if form.get("grant_type") == "client_credentials":
            ok = form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET
        elif form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            ok = self._assertion_ok(form.get("assertion", ""))
        if not ok:
            return _answer(
                400, {"error": "invalid_client", "error_description": "invalid client credentials"}
            )
        token = f"00Dfake!{self._next:08d}"
        self._next += 1
        self._tokens.add(token)
        self.counts["tokens"] += 1
        return _answer(200, {"access_token": token, "instance_url": self.url, "token_type": "Bearer"})

    def _assertion_ok(self, assertion: str) -> bool:
        try:
            head, claims, signature = assertion.split(".")
            _KEY.public_key().verify(
                _unb64(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
            got = json.loads(_unb64(claims))
        except Exception:
            return False
        return got.get("iss") == CLIENT_ID and got.get("sub") == USERNAME and got.get("exp", 0) > time.time()

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        bulk = _BULK.match(path)
        if bulk is not None:
            return self._bulk(method, bulk.group(1), bulk.group(2), body)
        found = _PATH.match(path)
        if found is None:
            return self._errors(404, "NOT_FOUND", "The requested resource does not exist")
        if method == "DELETE":
            ids = [i for i in ",".join(query.get("ids", [])).split(",") if i]
            if not 0 < len(ids) <= 200:
                return self._errors(400, "INVALID_FIELD", "ids: 1 to 200 record ids")
            return self._json(200, [self._delete(i) for i in ids])
        try:
            request = json.loads(body)
            records = request["records"]
            assert isinstance(records, list) and 0 < len(records) <= 200
        except (ValueError, KeyError, AssertionError):
            return self._errors(400, "JSON_PARSER_ERROR", "records: 1 to 200 objects")
        obj, field = found.group(1), found.group(2)
        types = {obj} if obj else {str((r.get("attributes") or {}).get("type")) for r in records}
        for name in types:
            if name not in self.objects:
                return self._errors(404, "NOT_FOUND", f"sObject type '{name}' is not supported.")
            unknown = {k for r in records for k in r if k not in ("attributes", "id")} - self.objects[name]
            if unknown:
                return self._errors(
                    400, "INVALID_FIELD", f"No such column '{sorted(unknown)[0]}' on sobject of type {name}"
                )
        if field is not None and field not in self.objects[obj]:
            return self._errors(400, "INVALID_FIELD", f"Field {field} is not an External ID field of {obj}")
        if obj is None:
            return self._json(200, [self._update(r) for r in records])
        return self._json(200, [self._upsert(obj, field, r) for r in records])

    # ---- Bulk API 2.0 ingest jobs ---------------------------------------------------------------

    def _bulk(self, method: str, job_id: str | None, part: str | None, body: bytes) -> Answer:
        if method == "POST" and job_id is None:
            spec = json.loads(body or b"{}")
            obj, operation = spec.get("object"), spec.get("operation")
            if obj not in self.objects:
                return self._errors(404, "NOT_FOUND", f"sObject type '{obj}' is not supported.")
            if operation not in ("upsert", "update", "delete") or (
                operation == "upsert" and spec.get("externalIdFieldName") not in self.objects[obj]
            ):
                return self._errors(400, "INVALIDJOB", "InvalidJob : operation or externalIdFieldName")
            new = f"750{len(self.bulk_jobs) + 1:015d}"
            self.bulk_jobs[new] = {"spec": spec, "state": "Open", "csv": b"", "at": 0.0}
            return self._json(200, {"id": new, "state": "Open", "object": obj, "operation": operation})
        job = self.bulk_jobs.get(job_id or "")
        if job is None:
            return self._errors(404, "NOT_FOUND", "The requested resource does not exist")
        if method == "PUT" and part == "batches":
            if job["state"] != "Open":
                return self._errors(409, "INVALIDJOBSTATE", "the job is not open")
            job["csv"] += body
            return 201, {"Content-Type": "text/plain"}, b""
        if method == "PATCH" and part is None:
            if json.loads(body or b"{}").get("state") == "UploadComplete" and job["state"] == "Open":
                job["state"], job["at"] = "UploadComplete", time.monotonic()
                self._process(job)
            return self._json(200, {"id": job_id, "state": job["state"]})
        if method == "GET" and part is None:
            return self._json(200, {"id": job_id, **self._job_state(job)})
        if method == "GET" and part in ("successfulResults", "failedResults", "unprocessedrecords"):
            if self._job_state(job)["state"] != "JobComplete":
                return self._errors(400, "INVALIDJOBSTATE", "results are not available yet")
            rows = list(job["results"][part])
            random.shuffle(rows)  # "not guaranteed to match the ordering of records in the original job data"
            out = io.StringIO()
            columns = {
                "successfulResults": ["sf__Id", "sf__Created"],
                "failedResults": ["sf__Id", "sf__Error"],
            }
            writer = csv.DictWriter(out, [*columns.get(part, []), *job["columns"]], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            return 200, {"Content-Type": "text/csv"}, out.getvalue().encode()
        return self._errors(405, "METHOD_NOT_ALLOWED", "not allowed")

    def _job_state(self, job: dict[str, Any]) -> dict[str, Any]:
        state = job["state"]
        if state == "UploadComplete":
            elapsed = time.monotonic() - job["at"]
            state = (
                "UploadComplete"
                if elapsed < self.job_s
                else "InProgress"
                if elapsed < 2 * self.job_s
                else "JobComplete"
            )
        results = job.get("results", {})
        return {
            "state": state,
            "numberRecordsProcessed": len(results.get("successfulResults", []))
            + len(results.get("failedResults", [])),
            "numberRecordsFailed": len(results.get("failedResults", [])),
        }

    def _process(self, job: dict[str, Any]) -> None:
        """Do a closed job's work (shown once it completes), row by row as the operation says."""
        spec = job["spec"]
        reader = csv.DictReader(io.StringIO(job["csv"].decode("utf-8")))
        job["columns"] = list(reader.fieldnames or [])
        results: dict[str, list[dict[str, Any]]] = {
            "successfulResults": [],
            "failedResults": [],
            "unprocessedrecords": [],
        }
        for row in reader:
            fields = {k: (None if v == "#N/A" else v) for k, v in row.items() if v != ""}
            if spec["operation"] == "upsert":
                fields["attributes"] = {"type": spec["object"]}
                result = self._upsert(spec["object"], spec["externalIdFieldName"], fields)
            elif spec["operation"] == "update":
                result = self._update({"id": fields.pop("Id", None), **fields})
            else:
                result = self._delete(str(fields.get("Id")))
            if result.get("success"):
                created = "true" if result.get("created") else "false"
                results["successfulResults"].append(
                    {"sf__Id": result.get("id"), "sf__Created": created, **row}
                )
            else:
                error = result["errors"][0]
                message = f"{error['statusCode']}:{error['message']}"
                results["failedResults"].append({"sf__Id": fields.get("Id", ""), "sf__Error": message, **row})
        job["results"] = results

    # ---- the work ------------------------------------------------------------------------------

    def _upsert(self, obj: str, field: str, record: dict[str, Any]) -> dict[str, Any]:
        value = record.get(field)
        if value in (None, ""):
            return _failed("MISSING_ARGUMENT", f"{field} not specified", [field])
        failed = self._refused(record)
        if failed is not None:
            return failed
        holders = sorted(self._index.get((obj, field, str(value).lower()), set()))
        if len(holders) > 1:
            return _failed(
                "DUPLICATE_EXTERNAL_ID", f"{field}: more than one record found for external id field", [field]
            )
        fields = {k: v for k, v in record.items() if k != "attributes"}
        if holders:
            self._write(holders[0], fields)
            return {"id": holders[0], "success": True, "errors": [], "created": False}
        rid = f"a0B{self._next:015d}"
        self._next += 1
        self.store[rid] = {"type": obj, "deleted": False}
        self._write(rid, fields)
        self.counts["created"] += 1
        return {"id": rid, "success": True, "errors": [], "created": True}

    def _update(self, record: dict[str, Any]) -> dict[str, Any]:
        held = self.store.get(str(record.get("id")))
        if held is None or held["deleted"]:
            return _failed("ENTITY_IS_DELETED", "entity is deleted", [])
        failed = self._refused(record)
        if failed is not None:
            return failed
        self._write(str(record["id"]), {k: v for k, v in record.items() if k not in ("attributes", "id")})
        return {"id": record["id"], "success": True, "errors": []}

    def _delete(self, rid: str) -> dict[str, Any]:
        held = self.store.get(rid)
        if held is None or held["deleted"]:
            return {"id": rid, **_failed("ENTITY_IS_DELETED", "entity is deleted", [])}
        self._write(rid, {field: None for field in self.external_ids})
        held["deleted"] = True  # to the recycle bin
        return {"id": rid, "success": True, "errors": []}

    def add(self, obj: str, **fields: Any) -> str:
        """Create a record as a person would; return its id."""
        with self._lock:
            rid = f"a0B{self._next:015d}"
            self._next += 1
            self.store[rid] = {"type": obj, "deleted": False}
            self._write(rid, fields)
            return rid

    def _write(self, rid: str, fields: dict[str, Any]) -> None:
        """Set ``fields`` of record ``rid``, keeping the external ID index."""
        held = self.store[rid]
        for name in self.external_ids & set(fields):
            old = held.get(name)
            if old not in (None, ""):
                self._index.get((held["type"], name, str(old).lower()), set()).discard(rid)
            if fields[name] not in (None, ""):
                self._index.setdefault((held["type"], name, str(fields[name]).lower()), set()).add(rid)
        held.update(fields)

    def _refused(self, record: dict[str, Any]) -> dict[str, Any] | None:
        values = {str(v).lower() for k, v in record.items() if k != "attributes" and v is not None}
        for value in values & set(self.lock_values):
            if self.lock_values[value] > 0:
                self.lock_values[value] -= 1
                self.counts["locked"] += 1
                return _failed("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", [])
        if values & self.reject_values:
            return _failed("FIELD_CUSTOM_VALIDATION_EXCEPTION", "a validation rule refused the record", [])
        return None

    # ---- around the work -----------------------------------------------------------------------

    def _json(self, status: int, body: Any) -> Answer:
        used = min(self.counts["requests"], self.daily_limit)
        headers = {
            "Content-Type": "application/json;charset=UTF-8",
            "Sforce-Limit-Info": f"api-usage={used}/{self.daily_limit}",
        }
        return status, headers, json.dumps(body).encode()

    def _errors(self, status: int, code: str, message: str) -> Answer:
        return self._json(status, [{"errorCode": code, "message": message, "fields": []}])

    # ---- the contract suites' view -------------------------------------------------------------

    def destination(self) -> dict[str, Any]:
        return {
            "type": "salesforce",
            "object": OBJECT,
            "external_id_field": EXTERNAL_ID,
            "login_url": self.url,
            "auth": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": "env:CONTRACT_SF_SECRET",
            "timeout_s": 2,
        }

    def mapping(self, generic: dict[str, Any], key_column: str) -> dict[str, Any]:
        # records are found by the external ID (the model's key); the generic fields are custom ones
        return {EXTERNAL_ID: key_column, **{f"{name}__c": source for name, source in generic.items()}}

    def records(self) -> list[dict[str, Any]]:
        return [
            {"id": r["id"], **{k.removesuffix("__c"): v for k, v in r.items() if k.endswith("__c")}}
            for r in ({"id": rid, **rec} for rid, rec in self._live_items())
        ]

    def _live_items(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [
                (rid, dict(r)) for rid, r in self.store.items() if r["type"] == OBJECT and not r["deleted"]
            ]

    def delete_by_hand(self, record_id: str) -> None:
        with self._lock:
            self._delete(record_id)  # to the recycle bin, where upserts by external ID do not look

    def writes(self, request: requests.PreparedRequest) -> bool:
        return "/composite/sobjects" in (request.url or "")


def _failed(code: str, message: str, fields: list[str]) -> dict[str, Any]:
    return {"success": False, "errors": [{"statusCode": code, "message": message, "fields": fields}]}


def _answer(status: int, body: Any) -> Answer:
    return status, {"Content-Type": "application/json;charset=UTF-8"}, json.dumps(body).encode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


FAKE = SalesforceFake
