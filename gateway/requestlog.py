"""The request log: one JSON line per request, whatever its outcome, to a file or to stdout.

The request path only queues a function returning the line's fields; a thread per worker, which
looks for lines every LISTENER_POLL_SECONDS rather than being woken for each, renders what is
queued and writes it in one piece, so gunicorn workers never interleave or lose each other's
lines: in a file, one O_APPEND write, the file opened by name for each write (a rename rotates
it, nothing lost); on stdout (GATEWAY_REQUEST_LOG=-), under a lock (`fcntl.lockf`) held by one
process at a time, as a pipe keeps only 4 KiB writes whole. Lost lines are counted and logged
to stderr at most once a minute; what a disk filling up left of a write is cut off. `close()`
(gunicorn's worker_exit hook, or atexit) writes what is queued.
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
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)

COMPLAINT_INTERVAL_SECONDS = 60.0
# Waking the listener for every record cost each request about 0.13 ms more of the worker's
# CPU than all the rendering and writing (README, Benchmarks); a line waits at most this long.
LISTENER_POLL_SECONDS = 0.05
BATCH_LINES = 64  # written at once, at most
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


class RequestLog:
    """Lines to `path` (or STDOUT) from a background thread; `on_lost(n)` counts lost lines."""

    def __init__(self, path: Path, on_lost: Callable[[int], None]):
        self.path = path
        self._write = _write_stdout if path == STDOUT else partial(_append, path)
        self._on_lost = on_lost
        self._lost = 0
        self._complained_at = float("-inf")
        self._queue: queue.Queue[Fields] = queue.Queue()
        self._closed = threading.Event()
        self._writer = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._writer.start()
        atexit.register(self.close)

    def emit(self, fields: Fields) -> None:
        """Log one line; `fields` runs on the background thread and returns its fields."""
        if self._closed.is_set():
            self._write_lines([fields])
        else:
            self._queue.put(fields)

    def flush(self) -> None:
        """Wait until every line queued so far is written (tests)."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued and stop the thread; later lines are written synchronously."""
        if not self._closed.is_set():
            self._closed.set()
            self._writer.join()
            while self._write_queued():  # queued while the thread was stopping
                pass

    def _run(self) -> None:
        while True:
            closing = self._closed.is_set()  # read first: what was queued before is written
            if not self._write_queued():
                if closing:
                    return
                time.sleep(LISTENER_POLL_SECONDS)

    def _write_queued(self) -> bool:
        """Write up to BATCH_LINES queued lines; False when none was queued."""
        batch = self._take_queued()
        if batch:
            self._write_lines(batch)
            for _ in batch:
                self._queue.task_done()
        return bool(batch)

    def _take_queued(self) -> list[Fields]:
        batch: list[Fields] = []
        with contextlib.suppress(queue.Empty):
            while len(batch) < BATCH_LINES:
                batch.append(self._queue.get_nowait())
        return batch

    def _write_lines(self, batch: list[Fields]) -> None:
        """Render each line (one that fails is lost alone), then write them in one piece."""
        lines = []
        for fields in batch:
            try:
                lines.append(orjson.dumps(fields(), option=orjson.OPT_APPEND_NEWLINE))
            except Exception:
                self._count_lost(1)
        if lines:
            try:
                self._write(b"".join(lines))
            except Exception:
                self._count_lost(len(lines))

    def _count_lost(self, lines: int) -> None:
        """Count lost lines; say why on stderr at most once a minute."""
        self._lost += lines
        self._on_lost(lines)
        now = time.monotonic()
        if now - self._complained_at >= COMPLAINT_INTERVAL_SECONDS:
            self._complained_at = now
            logger.error(
                "request log %s cannot be written (%s); %d line(s) lost so far",
                self.path,
                sys.exc_info()[1],
                self._lost,
            )


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
    file never keeps part of a line."""
    written = 0
    try:
        while written < len(data):  # one write, but for a pipe's reader or a nearly full disk
            written += os.write(fd, data[written:])
    except OSError:
        _cut_partial_line(fd, written)
        raise


def _cut_partial_line(fd: int, written: int) -> None:
    """Truncate the `written` bytes of a write that did not make it whole, unless another
    process appended since."""
    if written:
        with contextlib.suppress(OSError):
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, end - written)
