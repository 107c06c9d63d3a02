"""A lean keep-alive HTTP/1.1 client for loopback benchmarks, and the request payloads.

The client sends prepared request bytes on one socket and reads the answer by its
Content-Length: a few tens of microseconds of Python per request, so that on a 2-core machine
the load generator takes as little CPU as possible from the servers it measures (and the same
client is used for every path). Only what the servers under test answer is supported: no
chunked bodies, no redirects.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, NUMERIC_NAMES

HEADER_END = b"\r\n\r\n"
READ_BYTES = 256 * 1024


class ConnectionClosed(ConnectionError):
    """The server closed the connection before answering (an idle keep-alive timeout)."""


def prepare_post(
    host: str, port: int, path: str, body: bytes, headers: Mapping[str, str] | None = None
) -> bytes:
    """The bytes of a POST with a JSON body."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One persistent connection; `send` returns (status, body) of one prepared request."""

    def __init__(self, host: str, port: int, timeout: float = 120.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None
        self._pending = b""

    def send(self, request: bytes) -> tuple[int, bytes]:
        """Send and read the answer; reconnect once if an idle connection was closed."""
        for attempt in (1, 2):
            if self._sock is None:
                self._connect()
            try:
                self._sock.sendall(request)
                return self._read_response()
            except (ConnectionClosed, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._pending = None, b""

    def _connect(self) -> None:
        self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _read_response(self) -> tuple[int, bytes]:
        data = self._pending
        while HEADER_END not in data:
            data += self._recv(bool(data))
        head, _, rest = data.partition(HEADER_END)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked answers are not supported by this client")
        if length is None:
            raise RuntimeError(f"no Content-Length in the answer: {head[:200]!r}")
        chunks, have = [rest], len(rest)
        while have < length:
            chunk = self._recv(True)
            chunks.append(chunk)
            have += len(chunk)
        data = b"".join(chunks)
        body, self._pending = data[:length], data[length:]
        if close:
            self.close()
        return status, body

    def _recv(self, started: bool) -> bytes:
        chunk = self._sock.recv(READ_BYTES)
        if not chunk:
            if started:
                raise RuntimeError("the server closed the connection in the middle of an answer")
            raise ConnectionClosed("closed before answering")
        return chunk


@dataclass(frozen=True)
class Batch:
    """The same rows as a DataFrame (in-process) and as a `dataframe_split` JSON body."""

    frame: pd.DataFrame
    body: bytes

    @property
    def rows(self) -> int:
        return len(self.frame)


def make_batches(listings: pd.DataFrame, size: int, count: int, seed: int) -> list[Batch]:
    """`count` batches of `size` rows drawn from `listings` (with replacement across batches)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        rows = listings.iloc[rng.choice(len(listings), size, replace=size > len(listings))]
        frame = rows[list(FEATURE_NAMES)].reset_index(drop=True)
        frame = frame.astype({n: "float64" for n in NUMERIC_NAMES})
        frame = frame.astype({n: object for n in CATEGORICAL_NAMES})  # as MLflow's parser gives
        payload = {
            "dataframe_split": {
                "columns": list(FEATURE_NAMES),
                "data": frame.to_numpy(dtype=object).tolist(),
            }
        }
        batches.append(Batch(frame, orjson.dumps(payload)))
    return batches


def prices(body: bytes) -> np.ndarray:
    """The prices of a scoring answer."""
    return np.array([p["price"] for p in orjson.loads(body)["predictions"]], dtype=np.float64)
