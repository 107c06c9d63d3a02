"""Which model is served: the JSON file the launcher writes before `mlflow models serve` starts.

The file is re-read when its modification time changes, checked at most once a second, so the
`X-Model-Version` header costs nothing on the request path. `GET /model` returns it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Flask

from gateway import errors
from gateway.errors import GatewayError, json_response

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
CHECK_INTERVAL_SECONDS = 1.0
PUBLIC_FIELDS = ("name", "version", "alias", "uri", "run_id", "metrics", "served_since")


class ModelInfo:
    """Cached view of the served-model file; `on_change(old, new)` hears version changes
    (`old` is "" on the first read)."""

    def __init__(self, path: Path, on_change: Callable[[str, str], None] | None = None):
        self.path = path
        self._on_change = on_change
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._stamp: tuple[int, int] | None = None
        self._info: dict[str, Any] | None = None
        self._version = ""  # not read yet: the first refresh always reports a change

    @property
    def version(self) -> str:
        """The served model's version, or "unknown" when the file is missing or unreadable."""
        self.refresh()
        return self._version or UNKNOWN

    def current(self) -> dict[str, Any] | None:
        """The file's public fields, or None when there is no usable file."""
        self.refresh()
        return self._info

    def refresh(self, force: bool = False) -> None:
        """Re-read the file if its mtime or size changed; stat at most once a second."""
        now = time.monotonic()
        if not force and now - self._checked_at < CHECK_INTERVAL_SECONDS:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is refreshing; the cached value is good enough
        try:
            self._checked_at = now
            self._reload_if_changed()
        finally:
            self._lock.release()

    def _reload_if_changed(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError:
            self._set(None, None)
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._set(stamp, _read(self.path))

    def _set(self, stamp: tuple[int, int] | None, info: dict[str, Any] | None) -> None:
        old = self._version
        self._stamp, self._info = stamp, info
        self._version = str(info.get("version") or UNKNOWN) if info else UNKNOWN
        if self._on_change and self._version != old:
            self._on_change(old, self._version)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        logger.warning("cannot read the served-model file %s: %s", path, exc)
        return None
    if not isinstance(data, dict):
        logger.warning("the served-model file %s is not a JSON object", path)
        return None
    return {key: data.get(key) for key in PUBLIC_FIELDS}


def init_app(app: Flask, info: ModelInfo) -> None:
    """Serve GET /model from `info`."""
    blueprint = Blueprint("model", __name__)

    @blueprint.get("/model")
    def model():
        current = info.current()
        if current is None:
            raise GatewayError(errors.MODEL_INFO_UNAVAILABLE,
                               "no information about the served model yet (is it started?)")
        return json_response(current)

    app.register_blueprint(blueprint)
