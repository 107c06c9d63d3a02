"""The model server, seen through keep-alive `http.client` connections, a few kept idle per worker.

Connect and read timeouts are bounded (GATEWAY_CONNECT_TIMEOUT_SECONDS,
GATEWAY_READ_TIMEOUT_SECONDS); the read timeout bounds the whole answer, not each byte of it,
so a model server trickling its answer cannot hold a thread. Failures become gateway errors:
refused or unreachable 503 UPSTREAM_UNAVAILABLE, too slow 504 UPSTREAM_TIMEOUT, the model's
validation errors (a 400 with its structured `errors` list) 400 INVALID_FEATURES, anything else
502 UPSTREAM_ERROR (never the model server's text, which may dump the input or a stack trace).
A request the model server never answered (a failed connection, or one dropped before any
answer: uvicorn closes idle keep-alive connections) is sent once more on a new connection
(scoring is idempotent); after a read timeout it is not: the model server has the request.
The standard library's client rather than urllib3's pool: the same exchange for about 0.1 ms
less of the gateway's CPU per request (README, Benchmarks).
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway import errors
from gateway.errors import GatewayError
from pyfunc.contract import FieldError, cut

logger = logging.getLogger(__name__)

PING_READ_TIMEOUT_SECONDS = 2.0
READ_CHUNK_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 4000
MLFLOW_INVALID_VALUE = "INVALID_PARAMETER_VALUE"  # MLflow's own checks, e.g. of `params`
MODEL_REFUSED = "the model server refused the columns or params of this request; see /docs"
MAX_ERRORS = 100


@dataclass(frozen=True)
class UpstreamAnswer:
    """What the model server answered, unparsed."""

    status: int
    body: bytes
    content_type: str
    seconds: float


class Unreachable(Exception):
    """No connection to the model server could be made."""


class Dropped(Exception):
    """The connection closed before any answer came back."""


class AnswerTooSlow(Exception):
    """The model server's answer was still coming when the read timeout ran out."""


class _Connection(http.client.HTTPConnection):
    """A connection that sends small writes at once (no Nagle delay)."""

    def connect(self) -> None:
        try:
            super().connect()
        except OSError as exc:
            raise Unreachable(exc) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Upstream:
    """Client of the model server; `on_reachable(bool)` hears whether it answered."""

    def __init__(
        self,
        url: str,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int,
        on_reachable: Callable[[bool], None] = lambda up: None,
    ):
        parts = urlsplit(url)
        self.url = url
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._pool_size = pool_size
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._on_reachable = on_reachable

    def predict(self, body: bytes, content_type: str, request_id: str) -> UpstreamAnswer:
        """POST /invocations; raises GatewayError when no HTTP answer came back."""
        headers = {"Content-Type": content_type, "X-Request-ID": request_id}
        started = time.perf_counter()
        path = f"{self._prefix}/invocations"
        try:
            try:
                status, content, kind = self._exchange("POST", path, body, headers, reuse=True)
            except (Unreachable, Dropped):
                status, content, kind = self._exchange("POST", path, body, headers, reuse=False)
        except (TimeoutError, AnswerTooSlow):
            raise GatewayError(
                errors.UPSTREAM_TIMEOUT,
                f"the model server did not answer within {self._read_timeout:g} s",
            ) from None
        except (Unreachable, Dropped, OSError, http.client.HTTPException) as exc:
            raise self._unanswered(exc) from None
        self._on_reachable(True)
        return UpstreamAnswer(status, content, kind, time.perf_counter() - started)

    def _exchange(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], reuse: bool
    ) -> tuple[int, bytes, str]:
        """One request on an idle connection (`reuse`) or a new one: status, body, type."""
        connection = self._take() if reuse else None
        connection = connection or _Connection(*self._address, timeout=self._connect_timeout)
        try:
            if connection.sock is None:
                connection.connect()
            connection.sock.settimeout(self._read_timeout)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
            except (ConnectionError, http.client.BadStatusLine) as exc:
                raise Dropped(exc) from None
            content = _read_by(response, time.monotonic() + self._read_timeout)
        except BaseException:
            connection.close()
            raise
        self._give_back(connection, response.will_close)
        return response.status, content, response.getheader("Content-Type", errors.JSON)

    def _take(self) -> _Connection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _give_back(self, connection: _Connection, closing: bool) -> None:
        with self._lock:
            if not closing and len(self._idle) < self._pool_size:
                self._idle.append(connection)
                return
        connection.close()

    def _unanswered(self, reason: Exception) -> GatewayError:
        if isinstance(reason, Unreachable):
            self._on_reachable(False)
            logger.warning("model server %s unreachable: %s", self.url, reason)
            return GatewayError(
                errors.UPSTREAM_UNAVAILABLE, "the model server is not reachable; try again shortly"
            )
        logger.warning("model server %s failed: %r", self.url, reason)
        return GatewayError(errors.UPSTREAM_ERROR, "the model server dropped the connection")

    def ping(self) -> bool:
        """True when GET /ping answers 200; reports reachability either way."""
        connection = _Connection(*self._address, timeout=self._connect_timeout)
        try:
            connection.connect()
            connection.sock.settimeout(min(self._read_timeout, PING_READ_TIMEOUT_SECONDS))
            connection.request("GET", f"{self._prefix}/ping")
            ok = connection.getresponse().status == 200
        except (Unreachable, OSError, http.client.HTTPException):
            ok = False
        finally:
            connection.close()
        self._on_reachable(ok)
        return ok


def failure(answer: UpstreamAnswer) -> GatewayError:
    """The client-facing error for a non-200 answer of the model server."""
    if answer.status == 504:
        return GatewayError(errors.UPSTREAM_TIMEOUT, "the model server timed out on this request")
    if answer.status == 503:
        return GatewayError(errors.UPSTREAM_UNAVAILABLE, "the model server is not ready")
    content = _json_object(answer.body)
    problems = model_errors(content.get("errors"))
    if answer.status == 400 and problems:
        return GatewayError(errors.INVALID_FEATURES, _message(content), problems)
    if answer.status == 400 and content.get("error_code") == MLFLOW_INVALID_VALUE:
        return GatewayError(errors.INVALID_FEATURES, MODEL_REFUSED)
    logger.error("model server answered %d: %r", answer.status, answer.body[:200])
    return GatewayError(
        errors.UPSTREAM_ERROR, f"the model server failed on this request (status {answer.status})"
    )


def _message(content: dict[str, Any]) -> str:
    message = str(content.get("message") or "").strip() or "invalid input"
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "..."


def _read_by(response: http.client.HTTPResponse, deadline: float) -> bytes:
    """The whole body of `response`, or AnswerTooSlow after `deadline`. Each read returns what
    one receive brought, so a trickle is checked as it comes."""
    chunks = []
    while chunk := response.read1(READ_CHUNK_BYTES):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise AnswerTooSlow
    response.close()  # read1 leaves a fully read answer open; its connection stays usable
    return b"".join(chunks)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        content = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return content if isinstance(content, dict) else {}


def model_errors(raw: object) -> list[dict[str, Any]]:
    """The model's structured `errors` list: field, row and message of each entry."""
    if not isinstance(raw, list):
        return []
    return [
        FieldError(
            cut(str(entry.get("field") or "other")),
            entry["row"] if isinstance(entry.get("row"), int) else None,
            entry["message"][:MAX_MESSAGE_CHARS],
        ).as_dict()
        for entry in raw[:MAX_ERRORS]
        if isinstance(entry, dict) and isinstance(entry.get("message"), str)
    ]
