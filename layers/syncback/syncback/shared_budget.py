"""A rate budget shared by every ``deliver`` Lambda of one destination account, kept in DynamoDB.

Each request reserves the next free slot on one schedule, a GCRA (generic cell rate algorithm):
the item holds the time the next slot opens; a deliverer moves it on by one emission interval
``per_seconds / requests`` with a conditional write, then sleeps until its slot. Slots are evenly
spaced, so any rolling window holds at most ``requests`` + 1 starts however many Lambdas share the
budget, and together they use all of it. A 429 that arrives anyway pushes the schedule back for
everyone (adaptive back-off). One small conditional write a request: 100 per 10 s is 10 writes/s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from syncback.errors import DestinationUnavailable, RateLimited

if TYPE_CHECKING:
    from syncback.delivery import Interrupt

#: give up on a reservation after this many lost races (another deliverer wrote first each time)
MAX_RACES = 50


class DynamoRateBudget:
    """At most ``requests`` per ``per_seconds`` for every holder of the same ``name``."""

    def __init__(
        self,
        table: str,
        name: str,
        requests: int,
        per_seconds: float,
        client: Any,
        margin: float = 0.02,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.table = table
        self.name = name
        self.interval = per_seconds * (1 + margin) / requests
        self._client = client
        self._clock = clock
        self._sleep = sleep

    def acquire(self, interrupt: Interrupt | None = None) -> float | None:
        """Reserve the next slot on the shared schedule, wait for it, and return its time (None if
        ``interrupt`` was set while waiting: the slot goes unused)."""
        slot = self._move(lambda opens, now: max(opens, now), self.interval)
        wait = slot - self._clock()
        if wait > 0 and interrupt is None:
            self._sleep(wait)
        elif wait > 0 and interrupt is not None and not interrupt.sleep(wait):
            return None
        return slot

    def settle(self, slot: float) -> None:
        """Nothing to do: slots are evenly spaced, and the margin absorbs when requests arrive."""

    def pause(self, seconds: float) -> None:
        """Hold every deliverer of this budget for ``seconds`` from now."""
        self._move(lambda opens, now: max(opens, now + seconds), 0.0)

    def _move(self, start: Callable[[float, float], float], step: float) -> float:
        """Move the next-slot time to ``start(current, now) + step``; return ``start(...)``."""
        from botocore.exceptions import ClientError

        for _ in range(MAX_RACES):
            try:
                current = self._read()
            except ClientError as exc:
                raise _unavailable(self.name, exc) from exc
            now = self._clock()
            slot = start(current if current is not None else now, now)
            item = {"budget": {"S": self.name}, "opens_at": {"N": repr(slot + step)}}
            try:
                if current is None:
                    self._client.put_item(
                        TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(budget)"
                    )
                else:
                    self._client.put_item(
                        TableName=self.table,
                        Item=item,
                        ConditionExpression="opens_at = :seen",
                        ExpressionAttributeValues={":seen": {"N": repr(current)}},
                    )
                return slot
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise _unavailable(self.name, exc) from exc
        raise RateLimited(f"rate budget {self.name}: {MAX_RACES} reservations lost in a row", 1.0)

    def _read(self) -> float | None:
        response = self._client.get_item(
            TableName=self.table, Key={"budget": {"S": self.name}}, ConsistentRead=True
        )
        item = response.get("Item")
        return float(item["opens_at"]["N"]) if item else None


def _unavailable(name: str, exc: Exception) -> DestinationUnavailable:
    # throttled or unreachable DynamoDB: the request waits and is retried like a busy destination
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
    return DestinationUnavailable(f"rate budget {name}: DynamoDB answered {code}", 1.0)
