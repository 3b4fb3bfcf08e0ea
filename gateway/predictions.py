"""Prediction ids, and the prediction log's way out of the gateway.

Every prediction gets an id (`new_id`: time-ordered, unique without coordination) that the
caller gets back. A route that logs (contract.Logging) has a share of its predictions
recorded here: into a bounded in-memory buffer that a background task sends to the Redis
stream contract.KEY_PREDICTIONS in batches (one XADD per batch of records). Serving never
waits on it: when the buffer is full, or Redis does not answer, records are dropped and
counted (per route, in contract.KEY_PREDICTIONS_DROPPED), never queued without bound.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import defaultdict
from typing import Any

from gateway import contract
from gateway.metrics import Batched

log = logging.getLogger("gateway.predictions")


def new_id() -> str:
    """A prediction id: milliseconds since the epoch, then 40 random bits, in hex (21 chars)."""
    return f"{int(time.time() * 1000):011x}{os.urandom(5).hex()}"


class PredictionLog(Batched):
    socket_timeout = 2.0

    def __init__(
        self, redis_url: str, *, capacity: int = 20_000, batch: int = 2_000, flush_interval: float = 0.2
    ) -> None:
        super().__init__(redis_url, flush_interval=flush_interval)
        self.capacity, self.batch = capacity, batch
        self._records: list[list[Any]] = []
        self._dropped: dict[str, int] = defaultdict(int)  # per route key, not yet counted in Redis
        self.dropped = 0  # since this gateway started
        self.dropped_by_route: dict[str, int] = defaultdict(int)  # the same, per route key

    def record(
        self,
        route: Any,
        prediction_id: str,
        status: int,
        seconds: float,
        instances: int,
        body: bytes,
        answer: bytes | None,
    ) -> None:
        """Log one prediction of `route` (a gateway Route), if its logging samples it."""
        policy = route.logging
        if policy is None or (policy.sample_rate < 1.0 and random.random() >= policy.sample_rate):  # noqa: S311
            return
        if len(self._records) >= self.capacity:
            self.dropped += 1
            self.dropped_by_route[route.key] += 1
            self._dropped[route.key] += 1
            return
        self._records.append(
            [
                prediction_id,
                time.time(),
                route.service,
                route.environment,
                route.major,
                route.version,
                route.deployment,
                status,
                round(seconds * 1000, 3),
                instances,
                body.decode("utf-8", "replace") if policy.payloads else None,
                answer.decode("utf-8", "replace") if policy.payloads and answer is not None else None,
            ]
        )

    async def flush(self) -> None:
        if self._redis is None or not (self._records or self._dropped):
            return
        records, self._records = self._records, []
        dropped, self._dropped = self._dropped, defaultdict(int)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(records), self.batch):
                    batch = contract.PredictionBatch(records=records[start : start + self.batch])
                    pipe.xadd(
                        contract.KEY_PREDICTIONS,
                        {"records": batch.encode()},
                        maxlen=contract.PREDICTIONS_STREAM_MAX,
                        approximate=True,
                    )
                for key, count in dropped.items():
                    pipe.hincrby(contract.KEY_PREDICTIONS_DROPPED, key, count)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the log must never break serving
            log.warning("could not send %d logged predictions (%s); dropped", len(records), exc)
            self.dropped += len(records)
            for record in records:
                key = contract.route_key(record[3], record[2], record[4])
                self._dropped[key] += 1
                self.dropped_by_route[key] += 1
            for key, count in dropped.items():
                self._dropped[key] += count
