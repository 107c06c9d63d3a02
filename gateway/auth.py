"""API keys: from GATEWAY_API_KEYS and GATEWAY_API_KEYS_FILE, checked in constant time on every
request, with scopes and expiry; the file is re-read when it changes, without a restart.

GATEWAY_API_KEYS is a comma-separated list of `id:key` or `id:sha256:<hex digest of the key>`:
keys that may do everything, never expire, and get the default rate. GATEWAY_API_KEYS_FILE
(`gateway.keyfile`) adds keys with scopes, expiry and a rate of their own. Only SHA-256 digests
are kept in memory; a presented key is hashed and compared with every configured digest using
`hmac.compare_digest`. The key id (never the key) goes to the request log and the metrics.
Keys are read from `X-API-Key` or `Authorization: Bearer <key>`.

Reload: each worker stats the file (inode, mtime, size) on the request path at most every
KEYS_CHECK_SECONDS, and re-reads it when that changed: a request more than that after the file
was replaced sees the new keys, in every worker (an idle worker checks before its next request).
A file that cannot be read or parsed, or that would leave no key at all, is refused: the keys in
force stay, the error is logged and `gateway_api_keys_reloads_total{result="rejected"}` counts
it. A file still being written (its stamp changed while it was read) is read again at the next
check. Replace it atomically (write another file, then rename it), as Kubernetes does for a
mounted secret.

Scopes: `predict` for POST /invocations, `outcomes` for POST /outcomes, `read` for GET /model
and GET /metrics (when it needs a key); an endpoint not in ENDPOINT_SCOPES needs a key with
every scope. Public endpoints: /health, /ready, /docs, /openapi.json, and /metrics unless
GATEWAY_METRICS_PUBLIC=false.
Unknown paths and wrong methods answer 404/405 before any key check.

With no key configured the gateway refuses to start, unless GATEWAY_ALLOW_NO_AUTH=true (local
experiments only): every request is then accepted as key id "anonymous".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flask import Flask, g, request

from config.settings import KEYS_CHECK_SECONDS, Settings, SettingsError
from gateway import errors
from gateway.errors import GatewayError
from gateway.keyfile import (
    ALL_SCOPES,
    HEX_DIGEST,
    KEY_ID,
    OUTCOMES,
    PREDICT,
    READ,
    ApiKey,
    parse_file,
)

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
PUBLIC_ENDPOINTS = frozenset({"health.health", "health.ready", "docs.docs", "docs.openapi"})
METRICS_ENDPOINT = "metrics.metrics"
ENDPOINT_SCOPES: dict[str, frozenset[str]] = {
    "proxy.invocations": frozenset({PREDICT}),
    "outcomes.outcomes": frozenset({OUTCOMES}),
    "model.model": frozenset({READ}),
    METRICS_ENDPOINT: frozenset({READ}),
}
RELOAD_RESULTS = ("loaded", "rejected")  # what KeyRing reports
_FORMAT = "expected id:key or id:sha256:<64 hex digits>"
_Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class ApiKeys:
    """The keys in force, in the order they were listed."""

    keys: tuple[ApiKey, ...]

    @classmethod
    def parse(cls, raw: str) -> ApiKeys:
        """Parse GATEWAY_API_KEYS; a malformed entry raises SettingsError naming it by position
        (and by id when the id is well formed), never echoing the key."""
        entries = enumerate(map(str.strip, raw.split(",")), start=1)
        keys = [_parse_entry(entry, position) for position, entry in entries if entry]
        ids = [key.key_id for key in keys]
        duplicated = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
        if duplicated:
            raise SettingsError(f"GATEWAY_API_KEYS: duplicate key id(s) {', '.join(duplicated)}")
        return cls(tuple(keys))

    def match(self, key: str) -> ApiKey | None:
        """The entry of `key`, or None. Every digest is compared, in constant time each."""
        presented = hashlib.sha256(key.encode()).digest()
        found = None
        for entry in self.keys:
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        return found

    def identify(self, key: str) -> str | None:
        """The id of `key`, or None."""
        entry = self.match(key)
        return entry.key_id if entry else None

    def ids(self) -> list[str]:
        """Each key id once, in the order listed."""
        return list(dict.fromkeys(key.key_id for key in self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def _parse_entry(entry: str, position: int) -> ApiKey:
    key_id, sep, secret = entry.partition(":")
    where = f"GATEWAY_API_KEYS entry {position}"
    if not sep:
        raise SettingsError(f"{where} has no ':' ({_FORMAT})")
    if not KEY_ID.fullmatch(key_id):
        raise SettingsError(
            f"{where}: the key id must be 1 to 64 letters, digits, '.', '_' or '-' ({_FORMAT})"
        )
    where = f"{where} (id {key_id!r})"
    if secret.startswith("sha256:"):
        digest = secret.removeprefix("sha256:")
        if not HEX_DIGEST.fullmatch(digest):
            raise SettingsError(f"{where}: the sha256 digest must be 64 hex digits")
        return ApiKey(key_id, bytes.fromhex(digest))
    if not secret:
        raise SettingsError(f"{where}: the key is empty ({_FORMAT})")
    return ApiKey(key_id, hashlib.sha256(secret.encode()).digest())


class KeyRing:
    """GATEWAY_API_KEYS plus GATEWAY_API_KEYS_FILE, the file re-read when it changes (see the
    module's docstring). `on_reload(result, keys)` hears every load ("loaded", first one
    included) and every refused file ("rejected", with the keys kept)."""

    def __init__(self, settings: Settings, on_reload: Callable[[str, ApiKeys], None] | None = None):
        self._fixed = ApiKeys.parse(settings.gateway_api_keys)
        self._path = (
            Path(settings.gateway_api_keys_file) if settings.gateway_api_keys_file else None
        )
        self._allow_empty = settings.gateway_allow_no_auth
        self._on_reload = on_reload
        self._lock = threading.Lock()
        self._checked_at = time.monotonic()
        self._stamp: _Stamp | None = None
        from_file: list[ApiKey] = []
        if self._path is not None:
            self._stamp, text = self._read_whole(self._path)
            from_file = parse_file(text)
        self.keys = self._combine(from_file)
        self._report("loaded")

    def current(self) -> ApiKeys:
        """The keys in force; looks at the file first if it was not looked at for a while."""
        if self._path is not None and time.monotonic() - self._checked_at >= KEYS_CHECK_SECONDS:
            with self._lock:
                if time.monotonic() - self._checked_at >= KEYS_CHECK_SECONDS:
                    self._refresh(self._path)
                    self._checked_at = time.monotonic()  # a thread that waited reads the result
        return self.keys

    def _refresh(self, path: Path) -> None:
        try:
            stamp = _stamp(path)
            if stamp == self._stamp:
                return
            read_stamp, text = self._read_whole(path)
            if read_stamp != stamp:
                return  # still being written: the next check reads it
            keys = self._combine(parse_file(text))
        except (OSError, SettingsError) as error:
            self._refuse(None if isinstance(error, OSError) else stamp, error)
            return
        self._stamp, self.keys = stamp, keys
        logger.info("API keys reloaded from %s: %d keys, ids %s", path, len(keys), keys.ids())
        self._report("loaded")

    def _refuse(self, stamp: _Stamp | None, error: Exception) -> None:
        """Keep the keys in force; tell once per version of the file (None: unreadable)."""
        if stamp != self._stamp:
            self._stamp = stamp
            logger.error(
                "API keys file refused, the %d keys in force kept: %s", len(self.keys), error
            )
            self._report("rejected")

    def _read_whole(self, path: Path) -> tuple[_Stamp, str]:
        """The file's text and its stamp taken after the read (SettingsError: unreadable)."""
        try:
            text = path.read_bytes().decode()
            return _stamp(path), text
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8"
            raise SettingsError(f"GATEWAY_API_KEYS_FILE {path} cannot be read: {reason}") from None

    def _combine(self, from_file: Iterable[ApiKey]) -> ApiKeys:
        from_file = tuple(from_file)
        both = sorted(set(self._fixed.ids()) & {key.key_id for key in from_file})
        if both:
            raise SettingsError(
                f"key id(s) {', '.join(both)} in both GATEWAY_API_KEYS and GATEWAY_API_KEYS_FILE"
            )
        keys = ApiKeys((*self._fixed.keys, *from_file))
        if not keys and not self._allow_empty:
            raise SettingsError(
                "no API key: set GATEWAY_API_KEYS to id:key[,id:key...] (or id:sha256:<digest>) "
                "or list keys in GATEWAY_API_KEYS_FILE, or set GATEWAY_ALLOW_NO_AUTH=true to run "
                "without authentication (local only)"
            )
        return keys

    def _report(self, result: str) -> None:
        if self._on_reload is not None:
            self._on_reload(result, self.keys)


def _stamp(path: Path) -> _Stamp:
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def load_keys(settings: Settings) -> ApiKeys:
    """The configured keys; refuses to run without any unless GATEWAY_ALLOW_NO_AUTH is set."""
    keys = KeyRing(settings).keys
    if not keys:
        logger.warning("GATEWAY_ALLOW_NO_AUTH=true and no API key: every request is accepted")
    return keys


def presented_key() -> str | None:
    """The key sent in X-API-Key or as a Bearer token, if any."""
    key = request.headers.get("X-API-Key", "").strip()
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def init_app(
    app: Flask, settings: Settings, ring: KeyRing, on_failure: Callable[[str], None]
) -> None:
    """Check the key of every non-public request (its scope and expiry too) and put its entry
    in `g.api_key`; `on_failure(reason)` counts refusals."""
    public = PUBLIC_ENDPOINTS | ({METRICS_ENDPOINT} if settings.gateway_metrics_public else set())

    @app.before_request
    def authenticate() -> None:
        # No rule matched: let routing answer 404/405 without revealing anything else.
        if request.url_rule is None or request.endpoint in public:
            return
        keys = ring.current()
        if not keys:
            g.record.key_id = ANONYMOUS
            return
        key = presented_key()
        if key is None:
            on_failure("missing")
            raise GatewayError(
                errors.MISSING_API_KEY,
                "missing API key: send it in the X-API-Key header or as Authorization: Bearer",
                headers={"WWW-Authenticate": 'Bearer realm="gateway"'},
            )
        entry = keys.match(key)
        if entry is None:
            on_failure("invalid")
            raise GatewayError(errors.INVALID_API_KEY, "invalid API key")
        g.record.key_id = entry.key_id
        _check_entry(entry, on_failure)
        g.api_key = entry


def _check_entry(entry: ApiKey, on_failure: Callable[[str], None]) -> None:
    """Refuse a key past its expiry, or without the scope the endpoint needs."""
    if entry.expires is not None and time.time() >= entry.expires:
        on_failure("expired")
        expired = datetime.fromtimestamp(entry.expires, UTC).isoformat(timespec="seconds")
        raise GatewayError(
            errors.EXPIRED_API_KEY,
            f"the API key of {entry.key_id!r} expired at {expired.replace('+00:00', 'Z')}",
        )
    needed = ENDPOINT_SCOPES.get(str(request.endpoint), ALL_SCOPES)
    if not needed <= entry.scopes:
        on_failure("scope")
        raise GatewayError(
            errors.FORBIDDEN_SCOPE,
            f"the API key of {entry.key_id!r} may not use {request.method} {request.path}: "
            f"that needs scope {', '.join(sorted(needed))}, the key has "
            f"{', '.join(sorted(entry.scopes))}",
        )
