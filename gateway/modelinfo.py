"""Which model is served, and by which servers: the JSON file the rollout controller (or the
single-server launcher) writes atomically, re-read when it changes (stat at most once a second),
so the `X-Model-Version` header costs nothing on the request path. `GET /model` returns its
public fields; its training reference (for the drift monitor) is never sent.
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

from config.settings import MODEL_INFO_CHECK_SECONDS
from gateway import errors
from gateway.errors import GatewayError, json_response

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
PUBLIC_FIELDS = ("name", "version", "alias", "uri", "run_id", "metrics", "served_since")


class ModelInfo:
    """Cached view of the served-model file; `on_change(old, new)` hears version changes
    (`old` is "" on the first read), `on_reference(reference)` hears that the served model
    (uri and version) or its training reference changed (reference None: the file has none),
    `on_pool(servers, version)` hears the pool and its version, first of all: a file without
    `servers` names no pool (None: GATEWAY_UPSTREAM_URL), a missing file keeps the last pool;
    `on_shadow(servers, version)` hears the challenger's servers in shadow (the file's `shadow`
    entry; none: [] and "") with the pool."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[str, str], None] | None = None,
        on_reference: Callable[[dict[str, Any] | None], None] | None = None,
        on_pool: Callable[[list[str] | None, str], None] | None = None,
        on_shadow: Callable[[list[str], str], None] | None = None,
    ):
        self.path = path
        self._on_change = on_change
        self._on_reference = on_reference
        self._on_pool = on_pool
        self._on_shadow = on_shadow
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._stamp: tuple[int, int, int] | None = None
        self._info: dict[str, Any] | None = None
        self._reference: dict[str, Any] | None = None
        self._version = ""  # not read yet: the first refresh always reports a change
        # read, and taken at its switch_at: (stamp, data, switch_at)
        self._pending: tuple[tuple[int, int, int], dict[str, Any] | None, float] | None = None

    @property
    def version(self) -> str:
        """The served model's version, or "unknown" when the file is missing or unreadable."""
        self.refresh()
        return self._version or UNKNOWN

    def current(self) -> dict[str, Any] | None:
        """The file's public fields, or None when there is no usable file."""
        self.refresh()
        return self._info

    @property
    def reference(self) -> dict[str, Any] | None:
        """The served model's training reference (feature -> bins), None when there is none."""
        self.refresh()
        return self._reference

    def refresh(self, force: bool = False) -> None:
        """Re-read the file if it changed; stat at most once a second. A thread arriving while
        another one re-reads waits for it: no request goes to a pool that was just replaced.
        A file with `switch_at` (epoch seconds) is taken at that instant, not before: every
        worker, having read it within a second, switches at the same moment."""
        if self._pending is not None and time.time() >= self._pending[2]:
            with self._lock:
                if self._pending is not None:
                    self._set(*self._pending[:2])
                    self._pending = None
        if not force and time.monotonic() - self._checked_at < MODEL_INFO_CHECK_SECONDS:
            return
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked_at < MODEL_INFO_CHECK_SECONDS:
                return  # re-read by the thread this one waited for
            try:
                stat = os.stat(self.path)
            except OSError:
                self._pending = None
                self._set(None, None)
            else:
                stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                if stamp != self._stamp:
                    self._take(stamp, _read(self.path))
            self._checked_at = now  # after the reload: a thread arriving meanwhile waits

    def _take(self, stamp: tuple[int, int, int], data: dict[str, Any] | None) -> None:
        """Apply what was read now, or, while a version is served, hold it until its
        `switch_at`."""
        self._stamp, self._pending = stamp, None
        switch_at = (data or {}).get("switch_at")
        serving = self._info is not None
        if serving and isinstance(switch_at, int | float) and time.time() < switch_at:
            self._pending = (stamp, data, float(switch_at))
        else:
            self._set(stamp, data)

    def _set(self, stamp: tuple[int, int, int] | None, data: dict[str, Any] | None) -> None:
        old, old_model, old_reference = self._version, self._model(), self._reference
        self._stamp = stamp
        self._info = {key: data.get(key) for key in PUBLIC_FIELDS} if data else None
        self._reference = data.get("reference") if data else None
        self._version = str(data.get("version") or UNKNOWN) if data else UNKNOWN
        if self._on_pool and data:
            self._on_pool(_servers(data), self._version)
        if self._on_shadow and data:
            self._on_shadow(*_shadow(data))
        if self._on_change and self._version != old:
            self._on_change(old, self._version)
        if self._on_reference and (self._model() != old_model or self._reference != old_reference):
            self._on_reference(self._reference)

    def _model(self) -> tuple[object, str]:
        return (self._info or {}).get("uri"), self._version


def _servers(data: dict[str, Any]) -> list[str] | None:
    """The file's pool: a non-empty list of URLs, else None."""
    servers = data.get("servers")
    if isinstance(servers, list) and servers and all(isinstance(s, str) for s in servers):
        return servers
    if servers is not None:
        logger.warning("ignoring the served-model file's servers: not a list of URLs")
    return None


def _shadow(data: dict[str, Any]) -> tuple[list[str], str]:
    """The challenger's servers and version in shadow, or ([], "")."""
    shadow = data.get("shadow")
    if not isinstance(shadow, dict):
        return [], ""
    return _servers(shadow) or [], str(shadow.get("version") or UNKNOWN)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        logger.warning("cannot read the served-model file %s: %s", path, exc)
        return None
    if not isinstance(data, dict):
        logger.warning("the served-model file %s is not a JSON object", path)
        return None
    return data


def init_app(app: Flask, info: ModelInfo) -> None:
    """Serve GET /model from `info`."""
    blueprint = Blueprint("model", __name__)

    @blueprint.get("/model")
    def model():
        current = info.current()
        if current is None:
            raise GatewayError(
                errors.MODEL_INFO_UNAVAILABLE,
                "no information about the served model yet (is it started?)",
            )
        return json_response(current)

    app.register_blueprint(blueprint)
