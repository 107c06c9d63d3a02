"""The request log: one JSON line per request, whatever its outcome, to a file or to stdout.

The request path only hands a record to a `QueueHandler`; a `QueueListener` thread per worker,
which looks for records every LISTENER_POLL_SECONDS rather than being woken for each, renders
it (`JsonLineFormatter`) and writes it whole (`LineHandler`), so gunicorn workers never
interleave or lose each other's lines: in a file, one O_APPEND write, the file opened by name
for each line (a rename rotates it, nothing lost); on stdout (GATEWAY_REQUEST_LOG=-), under a
lock (`fcntl.lockf`) held by one process at a time, as a pipe keeps only 4 KiB writes whole.
Lost lines are counted and logged to stderr at most once a minute; half a line left by a disk
filling up is cut off. `close()` (gunicorn's worker_exit hook, or atexit) writes what is queued.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Any, cast

import orjson

logger = logging.getLogger(__name__)

COMPLAINT_INTERVAL_SECONDS = 60.0
# Waking the listener for every record cost each request about 0.13 ms more of the worker's
# CPU than all the rendering and writing (README, Benchmarks); a line waits at most this long.
LISTENER_POLL_SECONDS = 0.05
STDOUT = Path("-")  # GATEWAY_REQUEST_LOG's value for standard output
_STDOUT_FD = 1
_STDOUT_THREADS = threading.Lock()  # fcntl locks exclude processes, not threads

Fields = Callable[[], dict[str, Any]]


@dataclass
class RequestRecord:
    """What the request log says about one request; filled in as the request goes."""

    request_id: str
    method: str
    path: str
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    key_id: str | None = None
    rows: int | None = None
    upstream_latency_ms: float | None = None
    model_version: str | None = None
    error_code: str | None = None
    extra: Fields | None = None  # payload fields, run in the background

    def fields(self, status: int, latency_ms: float) -> dict[str, Any]:
        """The line's fields, payloads included."""
        fields = {
            "time": iso_utc(self.started_at),
            "request_id": self.request_id,
            "key_id": self.key_id,
            "method": self.method,
            "path": self.path,
            "status": status,
            "latency_ms": round(latency_ms, 3),
            "upstream_latency_ms": self.upstream_latency_ms,
            "rows": self.rows,
            "model_version": self.model_version,
            "error_code": self.error_code,
        }
        if self.extra is not None:
            fields.update(self.extra())
        return fields


def iso_utc(epoch_seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLineFormatter(logging.Formatter):
    """A record whose `msg` is a function returning the fields, as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        fields: Callable[[], dict] = record.msg  # type: ignore[assignment]
        return orjson.dumps(fields()).decode()


class LineHandler(logging.Handler):
    """Writes each record as one line to `path` (or stdout); `on_lost(1)` for each line lost."""

    def __init__(self, path: Path, on_lost: Callable[[int], None]):
        super().__init__()
        self.path = path
        self._write = _write_stdout if path == STDOUT else partial(_append, path)
        self._on_lost = on_lost
        self._lost = 0
        self._complained_at = float("-inf")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write((self.format(record) + "\n").encode())
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """Count the lost line; say why on stderr at most once a minute."""
        self._lost += 1
        self._on_lost(1)
        now = time.monotonic()
        if now - self._complained_at >= COMPLAINT_INTERVAL_SECONDS:
            self._complained_at = now
            logger.error(
                "request log %s cannot be written (%s); %d line(s) lost so far",
                self.path,
                sys.exc_info()[1],
                self._lost,
            )


class _Enqueue(QueueHandler):
    """Queues the record as it is: rendering waits for the listener's thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _PollingListener(QueueListener):
    """Takes what is queued without blocking; sleeps while nothing is."""

    def dequeue(self, block: bool) -> logging.LogRecord:
        while True:
            try:
                return cast(queue.Queue, self.queue).get_nowait()
            except queue.Empty:
                if not block:
                    raise
                time.sleep(LISTENER_POLL_SECONDS)


class RequestLog:
    """Lines to `path` (or STDOUT) from a background thread; `on_lost(n)` counts lost lines."""

    def __init__(self, path: Path, on_lost: Callable[[int], None]):
        self._writer = LineHandler(path, on_lost)
        self._writer.setFormatter(JsonLineFormatter())
        self._queue: queue.Queue = queue.Queue()
        self._enqueue = _Enqueue(self._queue)
        self._listener = _PollingListener(self._queue, self._writer)
        self._lock = threading.Lock()
        self._closed = False
        self._listener.start()
        atexit.register(self.close)

    def emit(self, fields: Fields) -> None:
        """Log one line; `fields` runs on the background thread and returns its fields."""
        record = logging.makeLogRecord({"name": __name__, "msg": fields})
        (self._writer if self._closed else self._enqueue).handle(record)

    def flush(self) -> None:
        """Wait until every line queued so far is written (tests)."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued and stop the thread; later lines are written synchronously."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._listener.stop()


def _append(path: Path, data: bytes) -> None:
    """Write `data` at the end of `path` in one O_APPEND write, creating what is missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_whole(fd, data)
    finally:
        os.close(fd)


def _write_stdout(data: bytes) -> None:
    """Write `data` to stdout while holding it locked against the other workers."""
    with _STDOUT_THREADS:
        fcntl.lockf(_STDOUT_FD, fcntl.LOCK_EX)
        try:
            _write_whole(_STDOUT_FD, data)
        finally:
            fcntl.lockf(_STDOUT_FD, fcntl.LOCK_UN)


def _write_whole(fd: int, data: bytes) -> None:
    """Write all of `data`; on a short write (a full disk) cut off what made it, so that a
    file never keeps half a line."""
    written = 0
    try:
        while written < len(data):  # one write, but for a pipe's reader or a nearly full disk
            written += os.write(fd, data[written:])
    except OSError:
        _cut_partial_line(fd, written)
        raise


def _cut_partial_line(fd: int, written: int) -> None:
    """Truncate the `written` bytes of a line that did not make it whole, unless another
    process appended since."""
    if written:
        with contextlib.suppress(OSError):
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, end - written)
