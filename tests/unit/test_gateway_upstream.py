"""The model server client: one keep-alive connection reused, answers read whole, and the
translation of the model server's answers into the gateway's errors: no dumps, no traces."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from typing import ClassVar

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.upstream import MODEL_REFUSED, Upstream, UpstreamAnswer, failure, model_errors
from tests.support.gateway import fake_upstream

DUMP = (
    "Failed to predict data '     type      sector  net_usable_area\n0  casa  vitacura"
    "  -5.0'. \nError: "
)


def answer(status: int, content: object) -> UpstreamAnswer:
    body = content if isinstance(content, bytes) else orjson.dumps(content)
    return UpstreamAnswer(status, body, "application/json", 0.01)


def test_the_models_errors_list_becomes_invalid_features():
    error = failure(
        answer(
            400,
            {
                "error_code": "INVALID_PARAMETER_VALUE",
                "message": "Invalid input (net_area): net_area must be > 0 (row 1, got -5)",
                "errors": [{"field": "net_area", "row": 1, "message": "net_area must be > 0"}],
            },
        )
    )
    assert (error.status, error.code) == (400, "INVALID_FEATURES")
    assert error.message == "Invalid input (net_area): net_area must be > 0 (row 1, got -5)"
    assert error.errors == [{"field": "net_area", "row": 1, "message": "net_area must be > 0"}]


def test_errors_list_keeps_field_row_and_message_only():
    raw = [
        {"field": "net_area", "row": 3, "message": "net_area too small", "x": 1},
        {"field": "sector", "row": None, "message": "unknown"},
        "junk",
        {"row": 1},
        {"field": "x" * 100, "row": "2", "message": "m"},
    ]
    assert model_errors(raw) == [
        {"field": "net_area", "row": 3, "message": "net_area too small"},
        {"field": "sector", "row": None, "message": "unknown"},
        {"field": "x" * 37 + "...", "row": None, "message": "m"},
    ]


def test_mlflows_own_refusal_is_invalid_features_without_its_text():
    error = failure(
        answer(
            400,
            {
                "error_code": "INVALID_PARAMETER_VALUE",
                "stack_trace": "Traceback ...",
                "message": DUMP + "Failed to enforce schema of params",
            },
        )
    )
    assert (error.status, error.code, error.errors) == (400, "INVALID_FEATURES", None)
    assert error.message == MODEL_REFUSED


@pytest.mark.parametrize(
    ("status", "content", "expected"),
    [
        (504, b"Request processing time exceeded limit", (504, "UPSTREAM_TIMEOUT")),
        (503, b"", (503, "UPSTREAM_UNAVAILABLE")),
        (500, b"Internal Server Error", (502, "UPSTREAM_ERROR")),
        (415, b"This predictor only supports the following content types", (502, "UPSTREAM_ERROR")),
        (
            400,
            {
                "error_code": "BAD_REQUEST",
                "stack_trace": "Traceback ...",
                "message": "Encountered an unexpected error while evaluating the model. Verify",
            },
            (502, "UPSTREAM_ERROR"),
        ),
        (400, {"message": DUMP, "errors": "not a list"}, (502, "UPSTREAM_ERROR")),
        (400, b"not json", (502, "UPSTREAM_ERROR")),
    ],
)
def test_other_upstream_answers_never_show_the_model_servers_text(status, content, expected):
    error = failure(answer(status, content))
    assert (error.status, error.code) == expected
    assert "Traceback" not in error.message
    assert "Failed to predict" not in error.message
    assert error.errors is None


class Scripted(socketserver.BaseRequestHandler):
    """Per connection, the next of `script`: "drop" (close unanswered), "slow" (answer
    after 1 s) or "ok"; every connection is counted."""

    script: ClassVar[list[str]] = []
    seen: ClassVar[list[str]] = []

    def handle(self) -> None:
        action = self.script[len(self.seen)] if len(self.seen) < len(self.script) else "ok"
        self.seen.append(action)
        self.request.recv(65536)
        if action == "drop":
            return
        if action == "slow":
            time.sleep(1.0)
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        )


@pytest.fixture
def scripted():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Scripted)
    Scripted.seen.clear()
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def upstream(*script: str) -> Upstream:
        Scripted.script[:] = script
        return Upstream(f"http://127.0.0.1:{server.server_address[1]}", 1.0, 0.3, 2)

    yield upstream
    server.shutdown()
    server.server_close()


def test_a_connection_dropped_before_any_answer_is_retried_once(scripted):
    assert scripted("drop", "ok").predict(b"{}", "application/json", "r1").status == 200
    assert Scripted.seen == ["drop", "ok"]


def test_a_second_drop_is_502(scripted):
    with pytest.raises(GatewayError) as raised:
        scripted("drop", "drop", "ok").predict(b"{}", "application/json", "r1")
    assert raised.value.code == "UPSTREAM_ERROR"
    assert Scripted.seen == ["drop", "drop"]


def test_a_read_timeout_is_never_retried(scripted):
    with pytest.raises(GatewayError) as raised:
        scripted("slow", "ok").predict(b"{}", "application/json", "r1")
    assert raised.value.code == "UPSTREAM_TIMEOUT"
    time.sleep(0.2)
    assert Scripted.seen == ["slow"]


def test_answers_whole_or_chunked_come_back_whole_on_one_reused_connection():
    seen: list[tuple[int, str, str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.client_address[1], self.headers["X-Request-ID"], self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            if len(seen) % 2:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (body[:3], body[3:], b""):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))

        def log_message(self, *args) -> None:
            pass

    with fake_upstream(Handler) as url:
        upstream = Upstream(f"{url}/prefix", 1.0, 2.0, pool_size=2)
        bodies = [b'{"n": %d, "pad": "%s"}' % (n, b"x" * n * 1000) for n in range(4)]
        answers = [
            upstream.predict(body, "application/json", f"r{n}") for n, body in enumerate(bodies)
        ]
    assert [(a.status, a.body, a.content_type) for a in answers] == [
        (200, body, "application/json; charset=utf-8") for body in bodies
    ]
    assert [(rid, path, body) for _, rid, path, body in seen] == [
        (f"r{n}", "/prefix/invocations", body) for n, body in enumerate(bodies)
    ]
    assert len({port for port, *_ in seen}) == 1  # one connection, kept alive
