"""The request body of /invocations: content type, size and JSON, checked before anything else.

Only JSON is accepted (415 otherwise; a missing Content-Type too, where the model server would
answer 500). The size limit is Flask's MAX_CONTENT_LENGTH (GATEWAY_MAX_BODY_BYTES): Werkzeug
refuses a Content-Length over it before reading and stops a chunked body that grows past it
(413). orjson parses; NaN and Infinity are not JSON and are refused with a message saying so
(400 INVALID_JSON).

A body the answer did not need (401, 403, 413, 415) is read and dropped before the answer goes
out, as nginx's lingering close does after it: a client still sending then reads the answer
instead of a connection reset, and a keep-alive connection stays usable. That is bounded to
LINGER_BODIES times the limit and LINGER_SECONDS; past either, the answer says `Connection:
close` and the worker closes the connection after it, the rest unread (`gateway/worker.py`).
"""

from __future__ import annotations

import contextlib
import time

import orjson
from flask import g, request
from werkzeug.exceptions import RequestEntityTooLarge

from gateway import errors
from gateway.errors import GatewayError

JSON_MIME = "application/json"
READ_CHUNK_BYTES = 64 * 1024
LINGER_BODIES = 4
LINGER_SECONDS = 5.0
_UTF8 = frozenset({"utf-8", "utf8"})
CLOSE_AFTER_ANSWER = "gateway.close_after_answer"  # WSGI environ key the worker reads


def require_json() -> str:
    """The content type to forward upstream; 415 unless the client sent JSON in UTF-8."""
    raw = request.headers.get("Content-Type", "")
    mime, _, parameters = raw.partition(";")
    if not raw.strip():
        raise GatewayError(
            errors.UNSUPPORTED_MEDIA_TYPE, "missing Content-Type: send the body as application/json"
        )
    if mime.strip().lower() != JSON_MIME:
        raise GatewayError(
            errors.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type must be application/json, got {raw[:80]!r}",
        )
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in _UTF8:
            raise GatewayError(
                errors.UNSUPPORTED_MEDIA_TYPE,
                f"only UTF-8 JSON is accepted, got charset {charset[:40]!r}",
            )
    return JSON_MIME


def read_body() -> bytes:
    """The whole body; 413 PAYLOAD_TOO_LARGE past MAX_CONTENT_LENGTH. Werkzeug stops a chunked
    body at the limit without saying whether more follows: one more byte of it tells."""
    limit = request.max_content_length or 0
    try:
        data = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise _too_large(f"Content-Length is {request.content_length} bytes", limit) from None
    at_limit = request.content_length is None and len(data) >= limit
    if at_limit and request.environ["wsgi.input"].read(1):
        raise _too_large("the body is larger", limit)
    g.body_read = True
    return data


def _too_large(what: str, limit: int) -> GatewayError:
    return GatewayError(
        errors.PAYLOAD_TOO_LARGE,
        f"{what}; the gateway accepts at most {limit} bytes: split the batch",
    )


def discard_unread() -> None:
    """Read and drop what the request left of its body, before answering; what is too much or
    too slow to drop is left unread, and the connection closes after the answer."""
    if g.get("body_read") or not (
        request.content_length or request.headers.get("Transfer-Encoding")
    ):
        return
    if not _drained():
        request.environ[CLOSE_AFTER_ANSWER] = True


def _drained() -> bool:
    budget = LINGER_BODIES * (request.max_content_length or READ_CHUNK_BYTES)
    stream, sock = request.environ["wsgi.input"], request.environ.get("gunicorn.sock")
    deadline = time.monotonic() + LINGER_SECONDS
    timeout = sock.gettimeout() if sock is not None else None
    try:
        while budget > 0 and (left := deadline - time.monotonic()) > 0:
            if sock is not None:
                sock.settimeout(left)
            chunk = stream.read(min(READ_CHUNK_BYTES, budget))
            if not chunk:
                return True
            budget -= len(chunk)
    except Exception:  # a timeout, a reset, a malformed chunk
        pass
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)
    return False


def parse_json(body: bytes) -> object:
    """The parsed body; 400 INVALID_JSON naming the problem and where it is."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(errors.INVALID_JSON, _describe(exc, body)) from None


def _describe(exc: orjson.JSONDecodeError, body: bytes) -> str:
    if not body.strip():
        return 'empty body: send a JSON object such as {"dataframe_records": [...]}'
    where = f"line {exc.lineno} column {exc.colno}"
    window = body[max(0, exc.pos - 1) : exc.pos + 9]
    if b"NaN" in window or b"Infinity" in window:
        return (
            f"invalid JSON at {where}: NaN and Infinity are not JSON numbers; send finite numbers"
        )
    return f"invalid JSON at {where}: {exc.msg}"
