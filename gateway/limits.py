"""Per-client rate limits, shared by every gunicorn worker of one gateway.

Each key id gets a rate (requests per second: its `rate` in GATEWAY_API_KEYS_FILE, else
GATEWAY_RATE_LIMIT; 0 is no limit) and a burst (requests at once after a pause: its `burst`,
else one second's worth). The rule is GCRA, a token bucket kept as one number: the
theoretical arrival time (TAT) of the id's next request. A request at `now` passes when
`max(TAT, now) + 1/rate <= now + burst/rate`, and moves TAT by 1/rate; otherwise it gets 429 and
waits `max(TAT, now) + 1/rate - burst/rate - now` seconds (`Retry-After`, rounded up).

The TATs live in a memory-mapped file (`state_path`: STATE_DIR, a tmpfs in the image and in
compose), one 72-byte slot per key id (the id, the TAT on CLOCK_MONOTONIC, which every process
of the host shares), `SLOTS` slots. Each worker maps the same file and takes an exclusive
`flock` on it for the few microseconds of a check, so the workers enforce one limit together,
whichever worker a request lands on. A slot whose TAT has passed is in the same state as an
empty one and may be taken by another id: the slots bound the ids limited at the same instant,
not the ids configured. When none is free a request passes and a warning is logged.

Why not flask-limiter / `limits`: their storages that several processes share are Redis,
Memcached, MongoDB (and etcd for some versions): a server to run beside every gateway; their
`memory://` storage is per process, so with N workers a client would get N times its rate
(or 1/N if the rate were split, whenever the workers' share of connections is uneven). Their
strategies are windows (fixed, moving, sliding counter); GCRA gives a token bucket's behaviour
(a burst, then a steady rate) with one number per id, which fits a fixed slot of a shared file,
in a few dozen lines of stdlib and no new service. With several gateway replicas (Kubernetes)
each replica keeps its own file: the limit is per replica, a client may get up to replicas x
rate in all.
"""

from __future__ import annotations

import fcntl
import logging
import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask, g

from config.settings import Settings
from gateway import errors
from gateway.errors import GatewayError

logger = logging.getLogger(__name__)

SLOTS = 1024
_SLOT = struct.Struct("<64sd")  # key id (UTF-8, NUL-padded to 64 bytes), TAT (monotonic seconds)
_EMPTY = bytes(64)
# A TAT further ahead than burst/rate + this is from another boot (CLOCK_MONOTONIC restarts
# at 0) or another layout: it is reset, never trusted.
_STALE_SECONDS = 1.0
_ROUNDING = 1e-9  # seconds: sums of 1/rate are not exact in floating point
_WARN_EVERY_SECONDS = 60.0


def state_path(settings: Settings) -> Path:
    """The shared file of the gateway on GATEWAY_PORT (gunicorn's master empties it at start)."""
    return settings.state_dir / f"ratelimit-gateway-{settings.gateway_port}"


def default_burst(rate: float) -> int:
    """One second's worth of requests, at least one."""
    return max(1, math.ceil(rate))


class RateLimiter:
    """GCRA per key id over a file shared by the processes that open the same path."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size != SLOTS * _SLOT.size:
            os.ftruncate(self._fd, SLOTS * _SLOT.size)
        self._map = mmap.mmap(self._fd, SLOTS * _SLOT.size)
        self._lock = threading.Lock()  # flock does not exclude threads of one process
        self._offsets: dict[bytes, int] = {}
        self._clock = clock
        self._warned_at = float("-inf")

    def wait(self, key_id: str, rate: float, burst: int) -> float:
        """0 if a request of `key_id` may go now (and count it), else the seconds until one
        may."""
        name = key_id.encode().ljust(64, b"\0")
        interval, window = 1.0 / rate, burst / rate
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = self._clock()
                offset = self._offset(name, now)
                if offset is None:
                    self._warn_busy(key_id, now)
                    return 0.0
                tat = _SLOT.unpack_from(self._map, offset)[1]
                if tat < now or tat > now + window + _STALE_SECONDS:
                    tat = now
                late = tat + interval - window - now
                if late > _ROUNDING:
                    return late
                _SLOT.pack_into(self._map, offset, name, tat + interval)
                return 0.0
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _warn_busy(self, key_id: str, now: float) -> None:
        if now - self._warned_at >= _WARN_EVERY_SECONDS:
            self._warned_at = now
            logger.warning("all %d rate-limit slots busy: %s not limited", SLOTS, key_id)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def _offset(self, name: bytes, now: float) -> int | None:
        """The slot of `name`: the one this process used last if it still holds it, else the
        one holding it, else an empty one, else one whose TAT has passed. Under the lock."""
        offset = self._offsets.get(name)
        if offset is not None and self._map[offset : offset + 64] == name:
            return offset
        offset = self._find(name)
        if offset is None:
            offset = self._find(_EMPTY)
            if offset is None:
                offset = self._passed(now)
            if offset is None:
                return None
            _SLOT.pack_into(self._map, offset, name, now)
        self._offsets[name] = offset
        return offset

    def _passed(self, now: float) -> int | None:
        """The first slot whose TAT has passed: its id is as if it had never been seen."""
        for offset in range(0, SLOTS * _SLOT.size, _SLOT.size):
            if _SLOT.unpack_from(self._map, offset)[1] < now:
                return offset
        return None

    def _find(self, name: bytes) -> int | None:
        """The first slot that holds `name` (a fast byte search, aligned to the slots)."""
        start = 0
        while (found := self._map.find(name, start)) >= 0:
            if found % _SLOT.size == 0:
                return found
            start = found + 1
        return None


def init_app(app: Flask, settings: Settings, limiter: RateLimiter) -> None:
    """Answer 429 to a request over its key id's rate (after `gateway.auth`, which puts the
    key's entry in `g.api_key`; requests without one are not limited)."""
    default = settings.gateway_rate_limit

    @app.before_request
    def limit() -> None:
        entry = g.get("api_key")
        rate = default if entry is None or entry.rate is None else entry.rate
        if entry is None or not rate:
            return
        burst = entry.burst or default_burst(rate)
        late = limiter.wait(entry.key_id, rate, burst)
        if late > 0:
            raise GatewayError(
                errors.RATE_LIMITED,
                f"key id {entry.key_id!r} is over its rate of {rate:g} requests/s "
                f"(burst {burst}): retry in {late:.3f} s",
                headers={"Retry-After": str(math.ceil(late))},
            )
