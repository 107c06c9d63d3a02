"""The request body of /invocations: content type, size and JSON, checked before anything else.

Only JSON is accepted (415 otherwise; a missing Content-Type too, where the model server would
answer 500). The size is checked on Content-Length before reading and enforced again while
reading, so a chunked body cannot exceed the limit either (413). orjson parses; NaN and
Infinity are not JSON and are refused with a message saying so (400 INVALID_JSON).
"""

from __future__ import annotations

import orjson
from flask import request

from gateway import errors
from gateway.errors import GatewayError

JSON_MIME = "application/json"
READ_CHUNK_BYTES = 64 * 1024
_UTF8 = frozenset({"utf-8", "utf8"})


def require_json() -> str:
    """The content type to forward upstream; 415 unless the client sent JSON in UTF-8."""
    raw = request.headers.get("Content-Type", "")
    mime, _, parameters = raw.partition(";")
    if not raw.strip():
        raise GatewayError(errors.UNSUPPORTED_MEDIA_TYPE,
                           "missing Content-Type: send the body as application/json")
    if mime.strip().lower() != JSON_MIME:
        raise GatewayError(errors.UNSUPPORTED_MEDIA_TYPE,
                           f"Content-Type must be application/json, got {raw[:80]!r}")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in _UTF8:
            raise GatewayError(errors.UNSUPPORTED_MEDIA_TYPE,
                               f"only UTF-8 JSON is accepted, got charset {charset[:40]!r}")
    return JSON_MIME


def read_body(limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes before and while reading (413)."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit, f"Content-Length is {length} bytes")
    stream = request.stream
    chunks: list[bytes] = []
    total = 0
    want = min(length, limit + 1) if length is not None else READ_CHUNK_BYTES
    while True:
        chunk = stream.read(max(1, min(want, limit + 1 - total)))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise _too_large(limit, "the body is larger")
        want = READ_CHUNK_BYTES
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def discard_unread(limit: int) -> None:
    """Read and drop the rest of a body of at most `limit` bytes that the answer did not need
    (401, 403, 415). gunicorn drains only 64 kB of it before the next request and otherwise
    closes the connection it has just answered with keep-alive: the client's next request on
    that connection would fail."""
    length = request.content_length
    if not length or length > limit:
        return
    while request.stream.read(READ_CHUNK_BYTES):
        pass


def _too_large(limit: int, what: str) -> GatewayError:
    return GatewayError(errors.PAYLOAD_TOO_LARGE,
                        f"{what}; the gateway accepts at most {limit} bytes: split the batch")


def parse_json(body: bytes) -> object:
    """The parsed body; 400 INVALID_JSON naming the problem and where it is."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(errors.INVALID_JSON, _describe(exc, body)) from None


def _describe(exc: orjson.JSONDecodeError, body: bytes) -> str:
    if not body.strip():
        return "empty body: send a JSON object such as {\"dataframe_records\": [...]}"
    where = f"line {exc.lineno} column {exc.colno}"
    window = body[max(0, exc.pos - 1): exc.pos + 9]
    if b"NaN" in window or b"Infinity" in window:
        return (f"invalid JSON at {where}: NaN and Infinity are not JSON numbers; "
                "send finite numbers")
    return f"invalid JSON at {where}: {exc.msg}"
