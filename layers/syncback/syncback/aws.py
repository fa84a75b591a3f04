"""The AWS side of the stores: S3 batches, DynamoDB history and run lock, SQS dead letters.

``S3BatchStore`` and ``DynamoStateStore`` implement the protocols in ``batches`` and ``state``;
``LambdaSettings`` and ``lambda_runtime`` give every handler the same ``Runtime`` from its
environment (the steps the handlers call are in ``steps``). boto3 clients are always passed in or
made on first use, never at import.

Run history: one item per run, partition key ``sync``, sort key ``run_id``. The run lock of a sync
is one more item of the same table, sort key ``#lock``, written by a conditional put that holds a
lease: a run that crashed without releasing it blocks its sync only until the lease expires.
Dead letters: one SQS message per rejected record (the DeadLetter JSON); a batch that failed whole
is sent by the state machine as a ``steps.FailedBatch`` message instead, and replay reads both.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from syncback.batches import BatchStore, dumps, spec_key
from syncback.delivery import Budget
from syncback.errors import RunInProgress
from syncback.runtime import Runtime
from syncback.shared_budget import DynamoRateBudget
from syncback.spec import Project, load_project
from syncback.state import DeadLetter, RunRecord, StateStore

LOCK_SORT_KEY = "#lock"
SQS_BATCH = 10


# ---- batches, receipts and manifests in S3 --------------------------------------------------


class S3BatchStore:
    """JSON documents as S3 objects under one bucket (encrypted by the bucket's default)."""

    def __init__(self, bucket: str, client: Any) -> None:
        self.bucket = bucket
        self.client = client

    def put_json(self, key: str, document: Any) -> None:
        self.put_bytes(key, dumps(document))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None
        data: bytes = response["Body"].read()
        return data

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True


# ---- run history and the run lock in DynamoDB, dead letters in SQS ---------------------------


class DynamoStateStore(StateStore):
    """Run history and the run lock in one DynamoDB table; dead letters as SQS messages."""

    def __init__(
        self,
        table: str,
        client: Any,
        dead_letter_queue_url: str | None = None,
        sqs: Any = None,
        lease_minutes: float = 120,
        clock: Any = time.time,
    ) -> None:
        self.table = table
        self.client = client
        self.dead_letter_queue_url = dead_letter_queue_url
        self.sqs = sqs
        self.lease_s = lease_minutes * 60
        self._clock = clock

    # ---- run history ----------------------------------------------------------------------

    def record_run(self, run: RunRecord) -> None:
        item = {
            "sync": {"S": run.sync},
            "run_id": {"S": run.run_id},
            "record": {"S": json.dumps(run.to_json())},
        }
        self.client.put_item(TableName=self.table, Item=item)

    def runs(self, sync: str | None = None, limit: int = 20) -> list[RunRecord]:
        if sync is None:
            items = self._scan()
        else:
            response = self.client.query(
                TableName=self.table,
                KeyConditionExpression="#s = :s",
                ExpressionAttributeNames={"#s": "sync"},
                ExpressionAttributeValues={":s": {"S": sync}},
                ScanIndexForward=False,  # newest first; the lock item ("#lock") sorts last
                Limit=limit + 1,
            )
            items = response.get("Items", [])
        records = [RunRecord(**json.loads(i["record"]["S"])) for i in items if "record" in i]
        return sorted(records, key=lambda r: r.run_id, reverse=True)[:limit]

    def _scan(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table}
        while True:
            response = self.client.scan(**kwargs)
            items += response.get("Items", [])
            if "LastEvaluatedKey" not in response:
                return items
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    # ---- dead letters ---------------------------------------------------------------------

    def put_dead_letters(self, sync: str, letters: Iterable[DeadLetter]) -> None:
        """Send one message per dead letter (batched by ten: SQS's limit per call)."""
        pending = [letter.to_json() for letter in letters]
        if pending and (self.sqs is None or self.dead_letter_queue_url is None):
            raise RuntimeError("DynamoStateStore has no dead-letter queue to send rejected records to")
        for start in range(0, len(pending), SQS_BATCH):
            entries = [
                {
                    "Id": str(n),
                    "MessageBody": json.dumps(letter, ensure_ascii=False),
                    "MessageAttributes": {"sync": {"DataType": "String", "StringValue": sync}},
                }
                for n, letter in enumerate(pending[start : start + SQS_BATCH])
            ]
            response = self.sqs.send_message_batch(QueueUrl=self.dead_letter_queue_url, Entries=entries)
            if response.get("Failed"):
                raise RuntimeError(f"SQS refused {len(response['Failed'])} dead letters of sync {sync}")

    def pending_letter_keys(self, sync: str) -> set[str]:
        """Return no key: SQS cannot look letters up by record, so there are none to settle."""
        return set()

    def resolve_dead_letters(self, sync: str, keys: Iterable[str]) -> None:
        """Do nothing: SQS cannot delete by record key. A replayed letter a later run already
        delivered is recognised as stale by ``replay`` and skipped, so nothing is overwritten."""

    def dead_letters(self, sync: str) -> list[DeadLetter]:
        """Return a sample of the sync's dead letters, read without consuming them (SQS cannot list)."""
        if self.sqs is None or self.dead_letter_queue_url is None:
            return []
        seen: dict[str, DeadLetter] = {}
        for _ in range(5):
            response = self.sqs.receive_message(
                QueueUrl=self.dead_letter_queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
            )
            for message in response.get("Messages", []):
                body = json.loads(message["Body"])
                if body.get("sync") == sync and "key" in body:
                    seen[message["MessageId"]] = DeadLetter(**body)
        return list(seen.values())

    # ---- one run of a sync at a time --------------------------------------------------------

    def acquire(self, sync: str, owner: str) -> None:
        """Take the run lock of ``sync`` for ``owner`` (a run id); raise RunInProgress if held."""
        now = self._clock()
        try:
            self.client.put_item(
                TableName=self.table,
                Item={
                    "sync": {"S": sync},
                    "run_id": {"S": LOCK_SORT_KEY},
                    "owner": {"S": owner},
                    "expires_at": {"N": str(int(now + self.lease_s))},
                },
                # free, expired, or already this run's (a retried Plan takes it again)
                ConditionExpression="attribute_not_exists(#s) OR expires_at < :now OR #o = :o",
                ExpressionAttributeNames={"#s": "sync", "#o": "owner"},
                ExpressionAttributeValues={":now": {"N": str(int(now))}, ":o": {"S": owner}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            raise RunInProgress(
                f"sync {sync}: another run is in progress; this one was not started"
            ) from None

    def release(self, sync: str, owner: str) -> None:
        """Give the run lock back, if ``owner`` still holds it."""
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.delete_item(
                TableName=self.table,
                Key={"sync": {"S": sync}, "run_id": {"S": LOCK_SORT_KEY}},
                ConditionExpression="#o = :o",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":o": {"S": owner}},
            )


# ---- what the Lambda steps share ---------------------------------------------------------------


class LambdaSettings(BaseModel):
    """The handlers' environment, parsed once per cold start."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    bucket: str = Field(alias="BATCH_BUCKET")
    runs_table: str = Field(alias="RUNS_TABLE")
    dead_letter_queue_url: str = Field(alias="DEAD_LETTER_QUEUE_URL")
    budgets_table: str | None = Field(None, alias="BUDGETS_TABLE")
    project: Path = Field(Path("/opt"), alias="SYNCBACK_PROJECT")  # the SyncProject layer
    lock_lease_minutes: float = Field(120, alias="LOCK_LEASE_MINUTES", gt=0)
    max_concurrency: int = Field(16, alias="DELIVER_MAX_CONCURRENCY", ge=1)
    state_machine_arn: str | None = Field(None, alias="STATE_MACHINE_ARN")
    trigger_prefix: str = Field("dbt/", alias="TRIGGER_PREFIX")
    run_timeout_s: float = Field(7200, alias="RUN_TIMEOUT_SECONDS", gt=0)  # the state machine's timeout

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LambdaSettings:
        return cls.model_validate(dict(os.environ if environ is None else environ))


Handler = TypeVar("Handler", bound=Callable[..., Any])


class Tracing(Protocol):
    """What a handler uses of Powertools' Tracer."""

    def capture_lambda_handler(self, handler: Handler) -> Handler: ...


class NoTracer:
    """Stands in for Powertools' Tracer when tracing is off: the X-Ray SDK (and botocore with it)
    stays out of a cold start."""

    def capture_lambda_handler(self, handler: Handler) -> Handler:
        return handler


def lambda_tracer(environ: Mapping[str, str] | None = None) -> Tracing:
    """Return Powertools' Tracer when tracing is on (``POWERTOOLS_TRACE_DISABLED`` not true), else a
    stand-in; the tracer never patches requests: a destination's URL may hold a secret."""
    environ = os.environ if environ is None else environ
    if environ.get("POWERTOOLS_TRACE_DISABLED", "false").lower() == "true":
        return NoTracer()
    from aws_lambda_powertools import Tracer

    return cast(Tracing, Tracer(patch_modules=("boto3", "botocore")))


@functools.cache
def handler_runtime() -> Runtime:
    """Return this Lambda container's Runtime: made on the first invocation, kept while warm."""
    return lambda_runtime(LambdaSettings.from_env())


@functools.lru_cache(maxsize=4)
def run_runtime(sync: str, run_id: str) -> Runtime:
    """Return the Runtime of one run's deliveries, kept while warm: the spec the run was planned with
    (see ``run_project``) and this container's stores; the packaged project only for a run planned
    before Plan stored its spec."""
    settings = LambdaSettings.from_env()
    store, state, budget_factory = _services(settings)
    project = run_project(store, settings.project, sync, run_id) or load_project(settings.project)
    return Runtime(project=project, store=store, state=state, budget_factory=budget_factory)


def run_project(store: BatchStore, root: Path, sync: str, run_id: str) -> Project | None:
    """Return the one-sync project Plan stored with a run (``Project.pinned``), or None when the run
    has none. Reading it needs no YAML and validates one sync, not every file of the project."""
    key = spec_key(sync, run_id)
    return Project.from_pinned(root, store.get_json(key)) if store.exists(key) else None


#: a container's batch store, state store and rate budget factory
Services = tuple[S3BatchStore, DynamoStateStore, Callable[[str, int, float], Budget] | None]


@functools.cache
def _services(settings: LambdaSettings) -> Services:
    """Return this container's batch store, state store and rate budgets, made once."""
    return _connect(settings)


def _connect(settings: LambdaSettings) -> Services:
    import boto3  # in the Lambda runtime already; imported here so the engine does not need it

    dynamodb = boto3.client("dynamodb")
    budget_factory: Callable[[str, int, float], Budget] | None = None
    if settings.budgets_table is not None:
        table = settings.budgets_table

        def budget_factory(account: str, requests: int, per_seconds: float) -> Budget:
            # one budget per destination account, shared by every concurrent deliver Lambda
            return DynamoRateBudget(table, account, requests, per_seconds, dynamodb)

    store = S3BatchStore(settings.bucket, boto3.client("s3"))
    state = DynamoStateStore(
        settings.runs_table,
        dynamodb,
        settings.dead_letter_queue_url,
        boto3.client("sqs"),
        lease_minutes=settings.lock_lease_minutes,
    )
    return store, state, budget_factory


def lambda_runtime(settings: LambdaSettings) -> Runtime:
    """Return the Runtime a handler runs against: the packaged project, S3, DynamoDB and SQS."""
    store, state, budget_factory = _connect(settings)
    return Runtime(
        project=load_project(settings.project), store=store, state=state, budget_factory=budget_factory
    )
