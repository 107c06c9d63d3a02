"""API keys: parsed once from GATEWAY_API_KEYS, checked in constant time on every request.

GATEWAY_API_KEYS is a comma-separated list of `id:key` or `id:sha256:<hex digest of the key>`.
Only SHA-256 digests are kept in memory; a presented key is hashed and compared with every
configured digest using `hmac.compare_digest`. The key id (never the key) goes to the request
log. Keys are read from `X-API-Key` or `Authorization: Bearer <key>`.

Public endpoints: /health, /ready, /docs, /openapi.json, and /metrics unless
GATEWAY_METRICS_PUBLIC=false (metrics carry no secrets nor per-client labels, and Prometheus
is easier to configure without a key; set it to false when the port is reachable from outside
a trusted network). Unknown paths and wrong methods answer 404/405 before any key check.

With no key configured the gateway refuses to start, unless GATEWAY_ALLOW_NO_AUTH=true (local
experiments only): every request is then accepted as key id "anonymous".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, g, request

from config.settings import Settings, SettingsError
from gateway import errors
from gateway.errors import GatewayError

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
PUBLIC_ENDPOINTS = frozenset({"health.health", "health.ready", "docs.docs", "docs.openapi"})
METRICS_ENDPOINT = "metrics.metrics"
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_FORMAT = "expected id:key or id:sha256:<64 hex digits>"


@dataclass(frozen=True)
class ApiKeys:
    """Configured key ids and the SHA-256 digests of their keys."""

    digests: tuple[tuple[str, bytes], ...]

    @classmethod
    def parse(cls, raw: str) -> ApiKeys:
        """Parse GATEWAY_API_KEYS; a malformed entry raises SettingsError naming it by position
        (and by id when the id is well formed), never echoing the key."""
        entries = enumerate(map(str.strip, raw.split(",")), start=1)
        digests = [_parse_entry(entry, position) for position, entry in entries if entry]
        ids = [key_id for key_id, _ in digests]
        duplicated = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
        if duplicated:
            raise SettingsError(f"GATEWAY_API_KEYS: duplicate key id(s) {', '.join(duplicated)}")
        return cls(tuple(digests))

    def identify(self, key: str) -> str | None:
        """The id of `key`, or None. Every digest is compared, in constant time each."""
        presented = hashlib.sha256(key.encode()).digest()
        found = None
        for key_id, digest in self.digests:
            if hmac.compare_digest(presented, digest):
                found = key_id
        return found

    def __len__(self) -> int:
        return len(self.digests)


def _parse_entry(entry: str, position: int) -> tuple[str, bytes]:
    key_id, sep, secret = entry.partition(":")
    where = f"GATEWAY_API_KEYS entry {position}"
    if not sep:
        raise SettingsError(f"{where} has no ':' ({_FORMAT})")
    if not _KEY_ID.fullmatch(key_id):
        raise SettingsError(
            f"{where}: the key id must be 1 to 64 letters, digits, '.', '_' or '-' ({_FORMAT})"
        )
    where = f"{where} (id {key_id!r})"
    if secret.startswith("sha256:"):
        digest = secret.removeprefix("sha256:")
        if not _HEX_DIGEST.fullmatch(digest):
            raise SettingsError(f"{where}: the sha256 digest must be 64 hex digits")
        return key_id, bytes.fromhex(digest)
    if not secret:
        raise SettingsError(f"{where}: the key is empty ({_FORMAT})")
    return key_id, hashlib.sha256(secret.encode()).digest()


def load_keys(settings: Settings) -> ApiKeys:
    """The configured keys; refuses to run without any unless GATEWAY_ALLOW_NO_AUTH is set."""
    keys = ApiKeys.parse(settings.gateway_api_keys)
    if not keys and not settings.gateway_allow_no_auth:
        raise SettingsError(
            "GATEWAY_API_KEYS is empty: set it to id:key[,id:key...] (or id:sha256:<digest>), "
            "or set GATEWAY_ALLOW_NO_AUTH=true to run without authentication (local only)"
        )
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


def init_app(app: Flask, settings: Settings, on_failure: Callable[[str], None]) -> None:
    """Check the key of every non-public request; `on_failure(reason)` counts refusals."""
    keys = load_keys(settings)
    public = PUBLIC_ENDPOINTS | ({METRICS_ENDPOINT} if settings.gateway_metrics_public else set())

    @app.before_request
    def authenticate() -> None:
        # No rule matched: let routing answer 404/405 without revealing anything else.
        if request.url_rule is None or request.endpoint in public:
            return
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
        key_id = keys.identify(key)
        if key_id is None:
            on_failure("invalid")
            raise GatewayError(errors.INVALID_API_KEY, "invalid API key")
        g.record.key_id = key_id
