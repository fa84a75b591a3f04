"""HubSpot's CRM v3 objects API over a store: routes, the batch upsert/create/update/archive rules, reads."""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from .faults import Faults
from .responses import _error, _Rejected, _Response
from .stats import _Stats
from .store import _Record, _Store
from .validation import _clean, _fail_whole_batch, _Input, _invalid, _item, _normalize, _reject_duplicates

BATCH_LIMIT = 100
PORTAL_ID = 1234567
DEFAULT_UNIQUE_PROPERTIES = {"contacts": "email", "companies": "domain"}
_TYPE_IDS = {"0-1": "contacts", "0-2": "companies", "0-3": "deals", "0-5": "tickets"}
_STANDARD_TYPES = {"contacts", "companies", "deals", "tickets", "products", "line_items", "quotes"}
_CUSTOM_TYPE = re.compile(r"^(p_\w+|2-\d+)$")
#: the date-versioned CRM paths (``/crm/objects/2026-03/...``, GA in April 2026) and the ``/crm/v3``
#: ones they replace (supported until September 2027)
VERSIONS = ("2026-03", "2026-09")
_CRM = r"^/crm/(?:v3/objects|objects/(?:" + "|".join(VERSIONS) + "))"
_BATCH = re.compile(_CRM + r"/([^/]+)/batch/(upsert|create|update|archive)$")
_ONE = re.compile(_CRM + r"/([^/]+)/([^/]+)$")
_LIST = re.compile(_CRM + r"/([^/]+)/?$")

_Outcome = tuple[int, list[dict[str, Any]], list[dict[str, Any]]]  # status, results, per-record errors


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _CrmApi:
    """Answers /crm requests as HubSpot does, counting into ``stats``; every call holds the sandbox lock."""

    def __init__(
        self, store: _Store, unique: dict[str, str], faults: Faults, known: dict[str, set[str]] | None = None
    ) -> None:
        self.store, self.unique, self.faults = store, unique, faults
        self.known = known or {}
        self.stats = _Stats()

    def route(self, method: str, path: str, query: dict[str, str], body: bytes) -> _Response:
        if method == "POST" and (match := _BATCH.match(path)):
            object_type = self.object_type(match.group(1))
            try:
                payload = json.loads(body)
            except ValueError as exc:
                raise _Rejected(_error(400, f"Invalid input JSON: {exc}", "VALIDATION_ERROR")) from exc
            return self.batch(match.group(2), object_type, query, payload)
        if method == "GET" and (match := _ONE.match(path)):
            return self._read_one(self.object_type(match.group(1)), unquote(match.group(2)), query)
        if method == "GET" and (match := _LIST.match(path)):
            return self._read_page(self.object_type(match.group(1)), query)
        return _error(404, f"No route for {method} {path}", "OBJECT_NOT_FOUND")

    def object_type(self, name: str) -> str:
        name = _TYPE_IDS.get(unquote(name), unquote(name))
        if name in _STANDARD_TYPES or name in self.unique or _CUSTOM_TYPE.match(name):
            return name
        raise _Rejected(_error(400, f"Unable to infer object type from: {name}", "VALIDATION_ERROR"))

    def batch(self, action: str, object_type: str, query: dict[str, str], payload: Any) -> _Response:
        inputs = payload.get("inputs") if isinstance(payload, dict) else None
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            message = "Invalid input JSON: expected an object with a list of objects under 'inputs'"
            raise _Rejected(_error(400, message, "VALIDATION_ERROR"))
        if len(inputs) > BATCH_LIMIT:
            message = f"{len(inputs)} inputs sent, over the limit of {BATCH_LIMIT} inputs per batch request"
            raise _Rejected(_error(400, message, "VALIDATION_ERROR"))
        self.stats.inputs += len(inputs)
        _fail_whole_batch(inputs, self.faults.fail_batch_values)
        started = _now()
        if action == "archive":
            for raw in inputs:
                record = self.store.get(object_type, str(raw.get("id", "")))
                if record is not None and not record.archived:  # unknown ids are ignored, as HubSpot does
                    self.store.archive(object_type, record, started)
                    self.stats.archived += 1
            return _Response(204)
        handler = {"upsert": self._upsert, "create": self._create, "update": self._update}[action]
        status, results, errors = handler(object_type, query, inputs, started)
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _now(),
        }
        if errors and self.faults.errors_without_trace:
            # some HubSpot errors name their record by its id value only, not its objectWriteTraceId
            for error in errors:
                error.pop("objectWriteTraceId", None)
                error.get("context", {}).pop("objectWriteTraceId", None)
        if errors:
            return _Response(207, {**body, "numErrors": len(errors), "errors": errors})
        return _Response(status, body)

    # ---- the batch rules --------------------------------------------------------------------------

    def _id_property(self, object_type: str, raw: dict[str, Any], query: dict[str, str]) -> str | None:
        """Return the input's idProperty (its own, else the query's); reject one that is not unique."""
        prop = raw.get("idProperty") or query.get("idProperty")
        if prop is not None and prop != self.unique.get(object_type):
            type_id = {v: k for k, v in _TYPE_IDS.items()}.get(object_type, object_type)
            raise _Rejected(
                _error(
                    400,
                    f"Unable to perform update/upsert by non-unique {type_id} property {prop} "
                    f"in portal ID {PORTAL_ID}",
                    "VALIDATION_ERROR",
                )
            )
        return str(prop) if prop is not None else None

    def _clean(self, object_type: str, raw: dict[str, Any]) -> _Input:
        return _clean(raw, self.unique.get(object_type))

    def _invalid(self, object_type: str, inp: _Input) -> dict[str, Any] | None:
        known = self.known.get(object_type)
        return _invalid(
            object_type,
            inp,
            self.faults.reject_values,
            None if known is None else known | {self.unique.get(object_type, "")},
        )

    def _result(self, object_type: str, record: _Record, inp: _Input, new: bool | None) -> dict[str, Any]:
        result = record.api(object_type)
        if new is not None:
            result["new"] = new
        if inp.trace is not None:
            result["objectWriteTraceId"] = inp.trace
        return result

    def _upsert(
        self, object_type: str, query: dict[str, str], inputs: list[dict[str, Any]], now: str
    ) -> _Outcome:
        props = [self._id_property(object_type, raw, query) for raw in inputs]
        if any(p is None for p in props):
            raise _Rejected(_error(400, "idProperty is required to upsert", "VALIDATION_ERROR"))
        cleaned = [self._clean(object_type, raw) for raw in inputs]
        keys = [
            None if i.id_value is None else _normalize(str(p), i.id_value)
            for i, p in zip(cleaned, props, strict=True)
        ]
        _reject_duplicates([k for k in keys if k is not None])
        results, errors = [], []
        for inp, prop, key in zip(cleaned, props, keys, strict=True):
            if key is None:
                errors.append(_item("VALIDATION_ERROR", "id is required to upsert", inp))
                continue
            inp.properties[str(prop)] = key  # the id decides the unique value, whatever properties say
            error = self._invalid(object_type, inp)
            if error is not None:
                errors.append(error)
                continue
            existing = self.store.find(object_type, key)
            if existing is not None:
                self.store.update(object_type, existing, inp.properties, now)
                self.stats.updated += 1
            record = existing or self.store.create(object_type, inp.properties, now)
            self.stats.created += existing is None
            results.append(self._result(object_type, record, inp, new=existing is None))
        return 200, results, errors

    def _create(
        self, object_type: str, query: dict[str, str], inputs: list[dict[str, Any]], now: str
    ) -> _Outcome:
        cleaned = [self._clean(object_type, raw) for raw in inputs]
        unique = self.unique.get(object_type)
        seen: set[str] = set()
        for inp in cleaned:
            key = inp.properties.get(unique) if unique else None
            if not key:
                continue
            existing = self.store.find(object_type, key)
            label = object_type.rstrip("s").replace("companie", "company").capitalize()
            if existing is not None:  # the whole request fails, naming only the first conflict
                raise _Rejected(
                    _error(409, f"{label} already exists. Existing ID: {existing.id}", "CONFLICT")
                )
            if key in seen:
                raise _Rejected(
                    _error(409, f"{label} already exists. Duplicate {unique} {key} in input", "CONFLICT")
                )
            seen.add(key)
        invalid = [self._invalid(object_type, inp) for inp in cleaned]
        first = next((e for e in invalid if e is not None), None)
        if first is not None and any(inp.trace is None for inp in cleaned):
            # HubSpot answers 207 for create only when each input has an objectWriteTraceId
            raise _Rejected(_error(400, first["message"], "VALIDATION_ERROR", errors=first["errors"]))
        results = []
        for inp, error in zip(cleaned, invalid, strict=True):
            if error is None:
                record = self.store.create(object_type, inp.properties, now)
                self.stats.created += 1
                results.append(self._result(object_type, record, inp, new=None))
        return 201, results, [e for e in invalid if e is not None]

    def _update(
        self, object_type: str, query: dict[str, str], inputs: list[dict[str, Any]], now: str
    ) -> _Outcome:
        props = [self._id_property(object_type, raw, query) for raw in inputs]
        cleaned = [self._clean(object_type, raw) for raw in inputs]
        keys = [
            (p, _normalize(p, i.id_value) if p and i.id_value else i.id_value)
            for i, p in zip(cleaned, props, strict=True)
        ]
        _reject_duplicates([str(k) for p, k in keys if k is not None])
        unique = self.unique.get(object_type)
        claimed: set[str] = set()
        results, errors = [], []
        for inp, (prop, key) in zip(cleaned, keys, strict=True):
            record = None
            if key is not None:
                record = self.store.find(object_type, key) if prop else self.store.get(object_type, key)
            if record is None or record.archived:
                type_name = object_type.upper().rstrip("S")
                message = f"Could not get some {type_name} objects, they may be deleted or not exist."
                errors.append(_item("OBJECT_NOT_FOUND", message, inp))
                continue
            error = self._invalid(object_type, inp)
            new_key = inp.properties.get(unique) if unique else None
            owner = self.store.find(object_type, new_key) if new_key else None
            if error is None and new_key and ((owner and owner.id != record.id) or new_key in claimed):
                message = (
                    f"{unique} {new_key} already belongs to another object. Existing ID: {owner and owner.id}"
                )
                error = _item("CONFLICT", message, inp)
            if error is not None:
                errors.append(error)
                continue
            if new_key:
                claimed.add(new_key)
            self.store.update(object_type, record, inp.properties, now)
            self.stats.updated += 1
            results.append(self._result(object_type, record, inp, new=None))
        return 200, results, errors

    # ---- reads ------------------------------------------------------------------------------------

    def _read_one(self, object_type: str, object_id: str, query: dict[str, str]) -> _Response:
        prop = self._id_property(object_type, {}, query)
        if prop:
            record = self.store.find(object_type, _normalize(prop, object_id))
        else:
            record = self.store.get(object_type, object_id)
        if record is None or record.archived != (query.get("archived") == "true"):
            return _error(404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND")
        return _Response(200, record.api(object_type))

    def _read_page(self, object_type: str, query: dict[str, str]) -> _Response:
        try:
            limit = min(max(int(query.get("limit", "10")), 1), BATCH_LIMIT)
            after = int(query.get("after", "0"))
        except ValueError:
            return _error(400, "limit and after must be integers", "VALIDATION_ERROR")
        archived = query.get("archived") == "true"
        ids = self.store.order.get(object_type, [])
        records = self.store.records.get(object_type, {})
        page: list[dict[str, Any]] = []
        for oid in ids[bisect_left(ids, after) :]:
            if records[oid].archived != archived:
                continue
            if len(page) == limit:
                return _Response(200, {"results": page, "paging": {"next": {"after": str(oid)}}})
            page.append(records[oid].api(object_type))
        return _Response(200, {"results": page})
