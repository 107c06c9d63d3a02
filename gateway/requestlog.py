"""The request log: one JSON line per request, whatever its outcome.

The request path only puts a small closure on a queue; a background thread per worker wakes at
most every 10 ms, renders the lines (parsing the model's answer when payloads are logged) and
appends them. The file is opened with O_APPEND and every batch of whole lines goes out in one
`write`, so gunicorn workers never interleave or lose each other's lines. When the file cannot
be written, requests are still served: the lost lines are counted and the failure is logged to
stderr at most once a minute; half a line left by a disk filling up mid-write is cut off.
`close()` (gunicorn's worker_exit hook, or atexit) drains the queue.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)

MAX_BATCH_LINES = 512
LINGER_SECONDS = 0.01
COMPLAINT_INTERVAL_SECONDS = 60.0
_STOP = object()

LineFactory = Callable[[], bytes]


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
    extra: Callable[[], dict[str, Any]] | None = None  # payload fields, run in the background

    def line(self, status: int, latency_ms: float) -> bytes:
        """The JSON line for this request, newline included."""
        fields = self.fields(status, latency_ms)
        if self.extra is not None:
            fields.update(self.extra())
        return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)

    def fields(self, status: int, latency_ms: float) -> dict[str, Any]:
        """The line's fields, without payloads."""
        return {
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


def iso_utc(epoch_seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestLog:
    """Appends lines to `path` from a background thread; `on_lost(n)` counts lost lines."""

    def __init__(self, path: Path, on_lost: Callable[[int], None]):
        self.path = path
        self._on_lost = on_lost
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False
        self._lost = 0
        self._complained_at = float("-inf")

    def emit(self, make_line: LineFactory) -> None:
        """Queue one line; `make_line` runs on the background thread and returns the bytes."""
        if self._closed:
            self._write_batch([make_line])
            return
        self._ensure_started()
        self._queue.put(make_line)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line queued so far is written (tests, shutdown)."""
        if self._thread is None or self._closed:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the thread; later lines are written synchronously."""
        with self._lock:
            thread, self._closed = self._thread, True
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            self._queue.put(_STOP)
            thread.join(timeout)

    def _ensure_started(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._closed or (self._thread is not None and self._pid == os.getpid()):
                return
            self._pid = os.getpid()  # a thread started before a fork does not exist here
            self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            # Linger so that lines arriving meanwhile share one wake-up and one write: while
            # this thread sleeps, a request's `put` is a plain append that wakes nobody.
            time.sleep(LINGER_SECONDS)
            while len(items) < MAX_BATCH_LINES:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write_batch([i for i in items if callable(i)])
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if _STOP in items:
                return

    def _write_batch(self, factories: list[LineFactory]) -> None:
        lines = []
        for make_line in factories:
            try:
                lines.append(make_line())
            except Exception:
                logger.exception("could not render a request-log line")
                self._lost_lines(1, None)
        if lines:
            self._append(b"".join(lines), len(lines))

    def _append(self, data: bytes, count: int) -> None:
        try:
            fd = self._open()
        except OSError as exc:
            self._lost_lines(count, exc)
            return
        written = 0
        try:
            written = os.write(fd, data)
            while written < len(data):  # only on a nearly full disk
                written += os.write(fd, data[written:])
        except OSError as exc:
            kept = _cut_partial_line(fd, data, written)
            self._lost_lines(count - data[:kept].count(b"\n"), exc)
        finally:
            os.close(fd)

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            return os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o644)

    def _lost_lines(self, count: int, exc: OSError | None) -> None:
        self._lost += count
        self._on_lost(count)
        now = time.monotonic()
        if exc is not None and now - self._complained_at >= COMPLAINT_INTERVAL_SECONDS:
            self._complained_at = now
            logger.error("request log %s cannot be written (%s); %d line(s) lost so far",
                         self.path, exc, self._lost)


def _cut_partial_line(fd: int, data: bytes, written: int) -> int:
    """After a short write of `data` (a full disk), truncate the file after the last whole line
    that made it, unless another process appended since; return the bytes of `data` kept."""
    kept = data.rfind(b"\n", 0, written) + 1
    if kept < written:
        with contextlib.suppress(OSError):
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, end - written + kept)
    return kept
