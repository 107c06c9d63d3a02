"""The model server, seen through one pooled keep-alive urllib3 connection pool per worker.

Connect and read timeouts are bounded (GATEWAY_CONNECT_TIMEOUT_SECONDS,
GATEWAY_READ_TIMEOUT_SECONDS); the read timeout bounds the whole answer, not each byte of it,
so a model server trickling its answer cannot hold a thread. Failures become gateway errors:
refused or unreachable 503 UPSTREAM_UNAVAILABLE, too slow 504 UPSTREAM_TIMEOUT, the model's
validation errors (a 400 with its structured `errors` list) 400 INVALID_FEATURES, anything else
502 UPSTREAM_ERROR (never the model server's text, which may dump the input or a stack trace).
`urllib3.Retry` retries once a request the model server never answered: a failed connection, or
one dropped before any answer (scoring is idempotent; uvicorn closes idle keep-alive
connections). A read timeout is never retried: the model server has the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, MaxRetryError, ReadTimeoutError
from urllib3.util import Retry

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


class RetryUnanswered(Retry):
    """Retry, except after a read timeout: the model server has the request and is slow."""

    def increment(self, method=None, url=None, response=None, error=None, **kwargs):  # type: ignore[override]
        if isinstance(error, ReadTimeoutError):
            raise error
        return super().increment(method, url, response, error, **kwargs)


RETRY_ONCE_UNANSWERED = RetryUnanswered(
    total=1,
    connect=1,
    read=1,
    status=0,
    other=0,
    redirect=False,
    allowed_methods=None,
    raise_on_status=False,
)


@dataclass(frozen=True)
class UpstreamAnswer:
    """What the model server answered, unparsed."""

    status: int
    body: bytes
    content_type: str
    seconds: float


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
        self._prefix = parts.path.rstrip("/")
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._ping_timeout = urllib3.Timeout(
            connect=connect_timeout, read=min(read_timeout, PING_READ_TIMEOUT_SECONDS)
        )
        self._pool = urllib3.connection_from_url(
            url,
            maxsize=pool_size,
            block=False,
            retries=RETRY_ONCE_UNANSWERED,
            timeout=self._timeout,
        )
        self._on_reachable = on_reachable

    def predict(self, body: bytes, content_type: str, request_id: str) -> UpstreamAnswer:
        """POST /invocations; raises GatewayError when no HTTP answer came back."""
        headers = {"Content-Type": content_type, "X-Request-ID": request_id}
        started = time.perf_counter()
        try:
            response = self._pool.urlopen(
                "POST",
                f"{self._prefix}/invocations",
                body=body,
                headers=headers,
                redirect=False,
                preload_content=False,
            )
            content = _read_by(response, time.monotonic() + (self._timeout.read_timeout or 0))
        except (ReadTimeoutError, AnswerTooSlow):
            raise GatewayError(
                errors.UPSTREAM_TIMEOUT,
                f"the model server did not answer within {self._timeout.read_timeout:g} s",
            ) from None
        except MaxRetryError as exc:
            raise self._unanswered(exc.reason) from None
        except HTTPError as exc:
            raise self._unanswered(exc) from None
        self._on_reachable(True)
        return UpstreamAnswer(
            response.status,
            content,
            response.headers.get("Content-Type", errors.JSON),
            time.perf_counter() - started,
        )

    def _unanswered(self, reason: Exception | None) -> GatewayError:
        if isinstance(reason, ConnectTimeoutError):  # NewConnectionError included
            self._on_reachable(False)
            logger.warning("model server %s unreachable: %s", self.url, reason)
            return GatewayError(
                errors.UPSTREAM_UNAVAILABLE, "the model server is not reachable; try again shortly"
            )
        logger.warning("model server %s failed: %r", self.url, reason)
        return GatewayError(errors.UPSTREAM_ERROR, "the model server dropped the connection")

    def ping(self) -> bool:
        """True when GET /ping answers 200; reports reachability either way."""
        try:
            response = self._pool.urlopen(
                "GET",
                f"{self._prefix}/ping",
                retries=False,
                redirect=False,
                timeout=self._ping_timeout,
            )
        except HTTPError:
            self._on_reachable(False)
            return False
        self._on_reachable(response.status == 200)
        return response.status == 200


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


class AnswerTooSlow(Exception):
    """The model server's answer was still coming when the read timeout ran out."""


def _read_by(response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
    """The whole body of `response`, or AnswerTooSlow (the connection closed) after `deadline`.
    Each read returns what one receive brought, so a trickle is checked as it comes."""
    chunks = []
    while chunk := response.read1(READ_CHUNK_BYTES):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            response.close()
            raise AnswerTooSlow
    response.release_conn()
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
