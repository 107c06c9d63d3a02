"""GATEWAY_API_KEYS_FILE: API keys with scopes, expiry and rate, one JSON object per line.

    # comments and blank lines are skipped
    {"id": "alice", "sha256": "<64 hex digits>", "scopes": ["predict"], "rate": 20}
    {"id": "alice", "sha256": "<64 hex digits>", "expires": "2027-01-31T00:00:00Z"}
    {"id": "grafana", "key": "<the key itself>", "scopes": ["read"]}

`id` and one of `sha256` (hex digest of the key, preferred) or `key` are required. `scopes`
(default: all) says what the key may do: `predict` (POST /invocations), `outcomes` (POST
/outcomes), `read` (GET /model and GET /metrics). `expires` is an ISO 8601 time with its
timezone; from then on the key is refused.
`rate` is requests per second for the id (0: no limit; default GATEWAY_RATE_LIMIT), `burst` the
requests it may send at once after a pause (default: one second's worth, at least 1). An id may
have several keys (a rotation: the new key next to the old one, which expires); its entries
share one rate, so they must not give different `rate` or `burst`.

The file is JSON lines rather than YAML: the gateway image has a JSON parser and no YAML one,
and a line per key is easy to add, remove and diff. Only digests are kept in memory.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from config.settings import SettingsError

PREDICT = "predict"
READ = "read"
OUTCOMES = "outcomes"
ALL_SCOPES = frozenset({PREDICT, READ, OUTCOMES})
KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
FIELDS = ("id", "sha256", "key", "scopes", "expires", "rate", "burst")


@dataclass(frozen=True)
class ApiKey:
    """One key: its id, the SHA-256 digest of the key, what it may do, until when, how fast
    (`rate` None: the gateway's default)."""

    key_id: str
    digest: bytes
    scopes: frozenset[str] = ALL_SCOPES
    expires: float | None = None
    rate: float | None = None
    burst: int | None = None


def parse_file(text: str, where: str = "GATEWAY_API_KEYS_FILE") -> list[ApiKey]:
    """The keys of a keys file; SettingsError names the first bad line (and id), never a key.
    An empty file is refused (it is what a file being written looks like): a file that lists
    no key holds a comment."""
    if not text:
        raise SettingsError(f"{where} is empty: to list no key, write a comment line in it")
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            keys.append(_parse_line(line, f"{where} line {number}"))
    check_rates(keys, where)
    return keys


def check_rates(keys: Iterable[ApiKey], where: str) -> None:
    """The entries of one id must agree on its rate and burst: they share one limit."""
    limits: dict[str, tuple[float | None, int | None]] = {}
    for key in keys:
        limit = limits.setdefault(key.key_id, (key.rate, key.burst))
        if limit != (key.rate, key.burst):
            raise SettingsError(
                f"{where}: the entries of id {key.key_id!r} give different rate or burst "
                "(an id has one limit, shared by its keys)"
            )


def _parse_line(line: str, where: str) -> ApiKey:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise SettingsError(f"{where} is not a JSON object") from None
    if not isinstance(entry, dict):
        raise SettingsError(f"{where} is not a JSON object")
    key_id = entry.get("id")
    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        raise SettingsError(f"{where}: id must be 1 to 64 letters, digits, '.', '_' or '-'")
    where = f"{where} (id {key_id!r})"
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise SettingsError(
            f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(FIELDS)})"
        )
    return ApiKey(
        key_id,
        _digest(entry, where),
        _scopes(entry.get("scopes"), where),
        _expires(entry.get("expires"), where),
        _rate(entry.get("rate"), where),
        _burst(entry.get("burst"), where),
    )


def _digest(entry: dict[str, Any], where: str) -> bytes:
    if ("sha256" in entry) == ("key" in entry):
        raise SettingsError(f"{where}: give exactly one of sha256 (preferred) or key")
    if "key" in entry:
        if not isinstance(entry["key"], str) or not entry["key"]:
            raise SettingsError(f"{where}: key must be a non-empty string")
        return hashlib.sha256(entry["key"].encode()).digest()
    if not isinstance(entry["sha256"], str) or not HEX_DIGEST.fullmatch(entry["sha256"]):
        raise SettingsError(f"{where}: sha256 must be 64 hex digits")
    return bytes.fromhex(entry["sha256"])


def _scopes(value: object, where: str) -> frozenset[str]:
    if value is None:
        return ALL_SCOPES
    allowed = ", ".join(sorted(ALL_SCOPES))
    if not isinstance(value, list) or not value or not set(value) <= ALL_SCOPES:
        raise SettingsError(f"{where}: scopes must be a non-empty list of {allowed}")
    return frozenset(value)


def _expires(value: object, where: str) -> float | None:
    if value is None:
        return None
    example = "e.g. 2027-01-31T00:00:00Z"
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise SettingsError(f"{where}: expires must be an ISO 8601 time with a timezone, {example}")
    return moment.timestamp()


def _rate(value: object, where: str) -> float | None:
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:  # type: ignore[arg-type,operator]
        raise SettingsError(f"{where}: rate must be a number >= 0 (requests per second; 0: none)")
    return float(value)  # type: ignore[arg-type]


def _burst(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError(f"{where}: burst must be an integer >= 1 (requests)")
    return value
