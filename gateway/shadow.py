"""Challengers in shadow: a copy of SHADOW_SHARE of the priced requests goes to the challenger's
model servers, off the client's path, and what the challenger answers is recorded beside the
champion's answer.

The served-model file's `shadow` entry names the challenger's servers (the rollout controller
writes it); they form a pool of their own here, so no client is ever answered from them. The
request path draws a random number and, for a copy, appends (the request, the body sent to the
champion, its answer) to a deque: no lock, no wake-up (waking a thread for each request costs
more of the worker's CPU than the work, see gateway/requestlog.py). A copy that finds
SHADOW_QUEUE copies waiting is dropped: the challenger is never waited for. A thread per worker
looks every POLL_SECONDS and, while the worker answers no request, sends what waits, one copy
at a time: the copies take the worker's idle time, not its clients' (a worker that is never idle
keeps its copies waiting, then drops them), and the challenger's servers see at most one copy
per gateway worker at once. For each copy the challenger priced, its rows
go to the prediction store's shadow_predictions table (the same request id and rows as the
champion's in predictions, its own model version) and a request-log line (path
/invocations/shadow) gives both versions and both prices. gateway_shadow_requests_total{result}
counts the copies sent, dropped and failed.
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.pool import Pool
from gateway.requestlog import RequestLog, RequestRecord, iso_utc
from gateway.store import SHADOW_PREDICTIONS, PredictionWriter, prediction_rows
from gateway.upstream import UpstreamAnswer
from pyfunc.schema import PREDICTION_COLUMN

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # a copy waits at most this long before the sender looks
SHADOW_PATH = "/invocations/shadow"  # the request log's path of a copy's line


@dataclass(frozen=True)
class Copy:
    """One priced request to send to the challenger, and what the champion answered."""

    record: RequestRecord
    body: bytes  # what the champion was sent
    content_type: str
    answer: bytes  # the champion's answer (200)
    sectors: Sequence[Any]
    listing_ids: Sequence[str] | None


class Shadow:
    """Copies to the challenger's `pool`, SHADOW_SHARE of them (`share`), at most `capacity`
    waiting; `count(result)` hears each sent, dropped or failed copy."""

    def __init__(
        self,
        pool: Pool,
        share: float,
        capacity: int,
        request_log: RequestLog,
        predictions: PredictionWriter | None,
        count: Callable[[str], None],
    ):
        self.pool, self.share = pool, share
        self._capacity = capacity
        self._log, self._predictions, self._count = request_log, predictions, count
        self._copies: deque[Copy] = deque()
        self._active = False
        self._answering = 0  # requests the worker is answering now
        self._draw = random.Random().random
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)

    def start(self) -> Shadow:
        """Start the sender thread."""
        self._thread.start()
        atexit.register(self.close)
        return self

    def use(self, servers: list[str], version: str) -> None:
        """The challenger's servers and version (none: [] and ""), from the served-model file."""
        self.pool.use(servers, version)
        self._active = bool(servers)

    def wants(self) -> bool:
        """Whether this request gets a copy: a challenger is in shadow and the draw says so."""
        return self._active and self._draw() < self.share

    def offer(self, copy: Copy) -> None:
        """Queue `copy` for the challenger, or drop it when `capacity` copies wait (no I/O)."""
        if len(self._copies) >= self._capacity:
            self._count("dropped")
            return
        self._copies.append(copy)

    def request_started(self) -> None:
        """A request came in: no copy is sent until the worker answered every request."""
        self._answering += 1

    def request_ended(self) -> None:
        self._answering -= 1

    def waiting(self) -> int:
        return len(self._copies)

    def close(self) -> None:
        """Stop sending: the copies still waiting are dropped (and counted)."""
        if not self._closed.is_set():
            self._closed.set()
            left = len(self._copies)
            self._copies.clear()
            for _ in range(left):
                self._count("dropped")
            if self._thread.is_alive():
                self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._closed.is_set():
            if self._copies and not self._answering:
                self.send(self._copies.popleft())
            else:
                time.sleep(POLL_SECONDS)

    def send(self, copy: Copy) -> None:
        """Price `copy` with the challenger; record its prices beside the champion's."""
        request_id = copy.record.request_id
        try:
            answer, version = self.pool.predict(copy.body, copy.content_type, request_id)
        except GatewayError as error:
            self._failed(copy, self.pool.version, None, error.code)
            return
        challenger = priced_rows(answer.body) if answer.status == 200 else None
        if challenger is None:
            self._failed(copy, version, answer, f"status {answer.status}")
            return
        self._record(copy, version, answer, challenger)
        self._count("sent")

    def _record(
        self, copy: Copy, version: str, answer: UpstreamAnswer, challenger: list[dict]
    ) -> None:
        record = copy.record
        if self._predictions is not None:
            rows = prediction_rows(
                record.request_id,
                record.key_id,
                iso_utc(record.started_at),
                version,
                copy.sectors,
                copy.listing_ids,
                challenger,
            )
            self._predictions.add(rows, SHADOW_PREDICTIONS)
        champion = priced_rows(copy.answer) or []
        self._log.emit(
            partial(
                shadow_line,
                copy,
                version,
                answer,
                predictions=[r.get(PREDICTION_COLUMN) for r in challenger],
                champion_predictions=[r.get(PREDICTION_COLUMN) for r in champion],
            )
        )

    def _failed(self, copy: Copy, version: str, answer: UpstreamAnswer | None, error: str) -> None:
        self._count("failed")
        self._log.emit(partial(shadow_line, copy, version, answer, error_code=error))


def priced_rows(answer: bytes) -> list[dict] | None:
    """The records of a model server's answer, or None when it has none."""
    try:
        predictions = orjson.loads(answer)["predictions"]
        return [p if isinstance(p, dict) else {PREDICTION_COLUMN: p} for p in predictions]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def shadow_line(
    copy: Copy, version: str, answer: UpstreamAnswer | None, **fields: Any
) -> dict[str, Any]:
    """The request log's line of a copy: its request's id, key and time, the challenger's
    version, status and latency beside the champion's version, and `fields`."""
    record = copy.record
    return {
        "time": iso_utc(record.started_at),
        "request_id": record.request_id,
        "key_id": record.key_id,
        "method": record.method,
        "path": SHADOW_PATH,
        "status": answer.status if answer else None,
        "upstream_latency_ms": round(answer.seconds * 1000, 3) if answer else None,
        "rows": record.rows,
        "model_version": version,
        "champion_version": record.model_version,
        **fields,
    }
