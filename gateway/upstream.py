"""The model server, seen through keep-alive connections, a few kept idle per worker.

Connect and read timeouts are bounded (GATEWAY_CONNECT_TIMEOUT_SECONDS,
GATEWAY_READ_TIMEOUT_SECONDS); the read timeout bounds the whole answer, not each byte of it,
so a model server trickling its answer cannot hold a thread. Failures become gateway errors:
refused or unreachable 503 UPSTREAM_UNAVAILABLE, too slow 504 UPSTREAM_TIMEOUT, the model's
validation errors (a 400 with its structured `errors` list) 400 INVALID_FEATURES, anything else
502 UPSTREAM_ERROR (never the model server's text, which may dump the input or a stack trace).
A request the model server never answered (a failed connection, or one dropped before any
answer: uvicorn closes idle keep-alive connections) is sent once more on a new connection
(scoring is idempotent); after a read timeout it is not: the model server has the request.
Answers are parsed by httptools (uvicorn's C HTTP parser) on a plain socket: `http.client`
parses headers through the `email` package, and urllib3 on top of it costs more again
(README, Benchmarks).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools
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


class _Answer:
    """One answer, as httptools' parser reads it in."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: list[bytes] = []
        self.content_type = errors.JSON
        self.keep_alive = self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # reset once the answer is complete

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    """One keep-alive connection to the model server, small writes sent at once (no Nagle)."""

    def __init__(self, address: tuple[str, int], connect_timeout: float):
        try:
            self.sock = socket.create_connection(address, timeout=connect_timeout)
        except OSError as exc:
            raise Unreachable(exc) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, request: bytes, read_timeout: float) -> tuple[int, bytes, str, bool]:
        """Send `request`, read its whole answer: status, body, content type, keep-alive.
        `read_timeout` bounds the whole answer, each receive is checked against it."""
        deadline = time.monotonic() + read_timeout
        self.sock.settimeout(read_timeout)
        answer = _Answer()
        try:
            self.sock.sendall(request)
            data = self.sock.recv(READ_CHUNK_BYTES)
        except ConnectionError as exc:
            raise Dropped(exc) from None
        if not data:
            raise Dropped("closed before any answer")
        while True:
            answer.parser.feed_data(data)
            if answer.complete:
                break
            if time.monotonic() > deadline:
                raise AnswerTooSlow
            data = self.sock.recv(READ_CHUNK_BYTES)
            if not data:
                raise ConnectionError("closed in the middle of the answer")
        status = answer.parser.get_status_code()
        return status, b"".join(answer.chunks), answer.content_type, answer.keep_alive

    def close(self) -> None:
        self.sock.close()


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
        self._host = f"{self._address[0]}:{self._address[1]}"
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._pool_size = pool_size
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._on_reachable = on_reachable

    def predict(self, body: bytes, content_type: str, request_id: str) -> UpstreamAnswer:
        """POST /invocations; raises GatewayError when no HTTP answer came back."""
        head = f"Content-Type: {content_type}\r\nX-Request-ID: {request_id}\r\n"
        request = self._request("POST", "/invocations", head, body)
        started = time.perf_counter()
        try:
            try:
                status, content, kind = self._exchange(request, reuse=True)
            except (Unreachable, Dropped):
                status, content, kind = self._exchange(request, reuse=False)
        except (TimeoutError, AnswerTooSlow):
            raise GatewayError(
                errors.UPSTREAM_TIMEOUT,
                f"the model server did not answer within {self._read_timeout:g} s",
            ) from None
        except (Unreachable, Dropped, OSError, httptools.HttpParserError) as exc:
            raise self._unanswered(exc) from None
        self._on_reachable(True)
        return UpstreamAnswer(status, content, kind, time.perf_counter() - started)

    def _request(self, method: str, path: str, head: str, body: bytes) -> bytes:
        """The request's bytes; `head` holds header lines the caller vouches for (no CR, LF)."""
        start = f"{method} {self._prefix}{path} HTTP/1.1\r\nHost: {self._host}\r\n"
        length = f"Content-Length: {len(body)}\r\n\r\n"
        return (start + head + length).encode("latin-1") + body

    def _exchange(self, request: bytes, reuse: bool) -> tuple[int, bytes, str]:
        """One request on an idle connection (`reuse`) or a new one: status, body, type."""
        connection = self._take() if reuse else None
        connection = connection or _Connection(self._address, self._connect_timeout)
        try:
            status, content, kind, keep_alive = connection.exchange(request, self._read_timeout)
        except BaseException:
            connection.close()
            raise
        self._give_back(connection, keep_alive)
        return status, content, kind

    def _take(self) -> _Connection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _give_back(self, connection: _Connection, keep_alive: bool) -> None:
        with self._lock:
            if keep_alive and len(self._idle) < self._pool_size:
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
        timeout = min(self._read_timeout, PING_READ_TIMEOUT_SECONDS)
        try:
            connection = _Connection(self._address, self._connect_timeout)
        except Unreachable:
            ok = False
        else:
            try:
                request = self._request("GET", "/ping", "", b"")
                ok = connection.exchange(request, timeout)[0] == 200
            except (Dropped, AnswerTooSlow, OSError, httptools.HttpParserError):
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
