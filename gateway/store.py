"""The prediction store: every priced row and every realized price, where the monitor joins them.

Tables (created by whoever connects first):
  predictions    one row per priced listing: request id and row, the client's listing id, time,
                 key id, model version, sector, price and its 80% range
  shadow_predictions  the same for the challenger's answers to the copies of requests sent to
                 it in shadow (gateway/shadow.py): same request ids and rows, its model version
  outcomes       the realized price of a prediction and its date; a correction replaces it and
                 counts a revision
  live_accuracy  the monitor's latest figures, which the gateway's /metrics exposes as gauges

PREDICTION_STORE_URL picks the database: `sqlite:///<file>` (the standard library's driver;
`make run`, one machine; WAL, so the monitor reads while a worker writes) or
`postgresql://...` (psycopg, imported only then; compose and Kubernetes, where the gateway's
pods and the monitor's CronJob share nothing but the database, and the request log goes to
stdout). The gateway speaks the DB-API itself: SQLAlchemy Core would add 13 MB of resident
memory per worker to psycopg's 11.5 MB (measured) for the few statements below. psycopg waits
on its socket through gevent, so a slow database never blocks a worker's other requests.

The request path never waits for the store: `PredictionWriter.add` queues the rows, and a
thread per worker writes them in batches (one transaction each, a row already stored is
skipped). A batch that fails is kept and tried again every RETRY_SECONDS; rows are dropped
only when more than MAX_QUEUED_ROWS wait, and counted (gateway_prediction_store_errors_total).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from pyfunc.schema import normalize_category

logger = logging.getLogger(__name__)

SQLITE = "sqlite:///"
POSTGRES = ("postgresql://", "postgresql+psycopg://")
STORE_URL_FORMAT = "must start with sqlite:/// or postgresql://"
WRITE_EVERY_SECONDS = 0.2
BATCH_ROWS = 2_000
RETRY_SECONDS = 2.0
MAX_QUEUED_ROWS = 200_000  # about 60 MB; half an hour of a store outage at 100 rows/s
COMPLAINT_INTERVAL_SECONDS = 60.0

_PRICED_ROWS = """CREATE TABLE IF NOT EXISTS {table} (
        request_id TEXT NOT NULL,
        row_index INTEGER NOT NULL,
        listing_id TEXT,
        predicted_at TEXT NOT NULL,
        key_id TEXT,
        model_version TEXT NOT NULL,
        sector TEXT NOT NULL,
        price DOUBLE PRECISION NOT NULL,
        price_low DOUBLE PRECISION,
        price_high DOUBLE PRECISION,
        PRIMARY KEY (request_id, row_index))"""
SCHEMA = (
    _PRICED_ROWS.format(table="predictions"),
    "CREATE INDEX IF NOT EXISTS predictions_listing ON predictions (listing_id, predicted_at)",
    "CREATE INDEX IF NOT EXISTS predictions_time ON predictions (predicted_at)",
    _PRICED_ROWS.format(table="shadow_predictions"),
    "CREATE INDEX IF NOT EXISTS shadow_predictions_version ON shadow_predictions (model_version)",
    """CREATE TABLE IF NOT EXISTS outcomes (
        request_id TEXT NOT NULL,
        row_index INTEGER NOT NULL,
        price DOUBLE PRECISION NOT NULL,
        observed_on TEXT NOT NULL,
        received_at TEXT NOT NULL,
        key_id TEXT,
        revisions INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (request_id, row_index))""",
    """CREATE TABLE IF NOT EXISTS live_accuracy (
        model_version TEXT NOT NULL,
        sector TEXT NOT NULL,
        name TEXT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        computed_at TEXT NOT NULL,
        PRIMARY KEY (model_version, sector, name))""",
)
PREDICTION_COLUMNS = (
    "request_id",
    "row_index",
    "listing_id",
    "predicted_at",
    "key_id",
    "model_version",
    "sector",
    "price",
    "price_low",
    "price_high",
)
PREDICTIONS, SHADOW_PREDICTIONS = "predictions", "shadow_predictions"  # tables of priced rows
# One executemany a batch: psycopg pipelines it, 12 to 22 µs of CPU a row against 23 to 29 for
# one multi-row INSERT (batches of 200 and 20, measured); SQLite 5 to 8 µs either way.
_INSERT = {
    table: f"INSERT INTO {table} ({', '.join(PREDICTION_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(PREDICTION_COLUMNS))}) "
    "ON CONFLICT (request_id, row_index) DO NOTHING"
    for table in (PREDICTIONS, SHADOW_PREDICTIONS)
}

PredictionRow = tuple[Any, ...]  # values in PREDICTION_COLUMNS' order
Queued = tuple[str, PredictionRow]  # (table, row)


class StoreError(Exception):
    """The store cannot be reached or refused a statement."""


class Store:
    """One connection to PREDICTION_STORE_URL, opened on first use and again after a failure;
    statements are serialized (a lock), each call is one transaction."""

    def __init__(self, url: str):
        self.url = url
        self._connect, self._placeholder = _driver(url)
        self._connection: Any = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[Callable[..., list[tuple]]], Any]) -> Any:
        """Call `work(execute)` in one transaction; `execute(sql, params=(), many=False)` runs
        a statement written with %s placeholders and returns its rows (or, for a statement
        without any, [(rowcount,)]). Raises StoreError."""
        with self._lock:
            try:
                connection = self._open()
                cursor = connection.cursor()
                result = work(_executor(cursor, self._placeholder))
                connection.commit()
                return result
            except Exception as error:
                self._discard()
                raise StoreError(f"prediction store: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._discard()

    def _open(self) -> Any:
        if self._connection is None:
            connection = self._connect()
            cursor = connection.cursor()
            for statement in SCHEMA:
                cursor.execute(statement)
            connection.commit()
            self._connection = connection
        return self._connection

    def _discard(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None


def _executor(cursor: Any, placeholder: str) -> Callable[..., list[tuple]]:
    def execute(sql: str, params: Sequence[Any] = (), many: bool = False) -> list[tuple]:
        sql = sql.replace("%s", placeholder)
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        if cursor.description is None:
            return [(cursor.rowcount,)]
        return [tuple(row) for row in cursor.fetchall()]

    return execute


def _driver(url: str) -> tuple[Callable[[], Any], str]:
    """A connect function for `url` and its driver's placeholder."""
    if url.startswith(SQLITE):
        return partial(_connect_sqlite, url.removeprefix(SQLITE)), "?"
    for prefix in POSTGRES:
        if url.startswith(prefix):
            return partial(_connect_postgres, "postgresql://" + url.removeprefix(prefix)), "%s"
    raise StoreError(f"PREDICTION_STORE_URL: {STORE_URL_FORMAT}, got {url.split(':')[0]!r}")


def _connect_sqlite(path: str) -> Any:
    import sqlite3
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _connect_postgres(conninfo: str) -> Any:
    import psycopg

    return psycopg.connect(conninfo, connect_timeout=5)


class PredictionWriter:
    """Priced rows to the store (table PREDICTIONS or SHADOW_PREDICTIONS), in batches, from a
    thread of its own; `on_lost(n)` counts rows dropped because too many waited."""

    def __init__(self, store: Store, on_lost: Callable[[int], None]):
        self.store = store
        self._on_lost = on_lost
        self._rows: deque[Queued] = deque()
        self._pending = 0  # queued or being written
        self._idle = threading.Condition()
        self._closed = threading.Event()
        self._complained_at = float("-inf")
        self._thread = threading.Thread(target=self._run, name="prediction-store", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def add(self, rows: Sequence[PredictionRow], table: str = PREDICTIONS) -> None:
        """Queue rows for `table` of the store (no I/O)."""
        dropped = max(0, len(self._rows) + len(rows) - MAX_QUEUED_ROWS)
        with self._idle:
            self._rows.extend((table, row) for row in rows[: len(rows) - dropped])
            self._pending += len(rows) - dropped
        if dropped:
            self._on_lost(dropped)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row queued so far is stored; False if that took too long."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        """Store what is queued and stop the thread; rows the store refuses then are lost."""
        if not self._closed.is_set():
            self._closed.set()
            self._thread.join(timeout=60)
            if left := len(self._rows):
                self._rows.clear()
                self._on_lost(left)
                logger.error("prediction store unreachable at exit: %d row(s) lost", left)
            self.store.close()

    def _run(self) -> None:
        while True:
            closing = self._closed.is_set()  # read first: what was queued before is written
            if self._write_batch():
                continue
            if closing:
                return
            time.sleep(RETRY_SECONDS if self._rows else WRITE_EVERY_SECONDS)

    def _write_batch(self) -> bool:
        """Store up to BATCH_ROWS queued rows; False when none was queued or the store failed
        (the rows stay queued)."""
        batch = list(_take(self._rows, BATCH_ROWS))
        if not batch:
            return False
        try:
            self.store.run(partial(insert_tables, batch=batch))
        except StoreError as error:
            self._rows.extendleft(reversed(batch))
            self._complain(error)
            return False
        with self._idle:
            self._pending -= len(batch)
            self._idle.notify_all()
        return True

    def _complain(self, error: StoreError) -> None:
        now = time.monotonic()
        if now - self._complained_at >= COMPLAINT_INTERVAL_SECONDS:
            self._complained_at = now
            logger.error("%s; %d row(s) wait, tried again", error, len(self._rows))


def insert_tables(execute: Callable[..., list[tuple]], batch: Sequence[Queued]) -> None:
    """Insert each (table, row) of `batch` into its table."""
    for table in {table for table, _ in batch}:
        insert_predictions(execute, [row for t, row in batch if t == table], table)


def insert_predictions(
    execute: Callable[..., list[tuple]], rows: Sequence[PredictionRow], table: str = PREDICTIONS
) -> None:
    """Insert `rows` into `table` in one executemany; a row already stored is skipped."""
    execute(_INSERT[table], rows, many=True)


def _take(
    rows: deque[tuple[str, PredictionRow]], limit: int
) -> Iterator[tuple[str, PredictionRow]]:
    for _ in range(min(limit, len(rows))):
        yield rows.popleft()


def prediction_rows(
    request_id: str,
    key_id: str | None,
    predicted_at: str,
    version: str,
    sectors: Sequence[Any],
    listing_ids: Sequence[str] | None,
    predictions: Sequence[dict[str, Any]],
) -> list[PredictionRow]:
    """The store's rows of one answered valuation (PREDICTION_COLUMNS' order); a row without a
    finite price is left out."""
    rows = []
    for i, (sector, answer) in enumerate(zip(sectors, predictions, strict=False)):
        price = answer.get("price")
        if not isinstance(price, (int, float)) or not math.isfinite(price):
            continue
        listing_id = listing_ids[i] if listing_ids else None
        low, high = answer.get("price_low"), answer.get("price_high")
        rows.append(
            (request_id, i, listing_id, predicted_at, key_id, version,
             normalize_category(sector) if isinstance(sector, str) else str(sector),
             float(price), _number(low), _number(high))
        )  # fmt: skip
    return rows


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
