"""The challenger in shadow, in process: copies of priced requests to a stand-in challenger
server (a real HTTP server on 127.0.0.1), its prices in the prediction store and the request
log beside the champion's, and the bounded queue that drops (and counts) what it cannot keep."""

from __future__ import annotations

import http.server
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from gateway.app import create_app, gateway_of
from gateway.pool import Pool
from gateway.requestlog import RequestLog, RequestRecord
from gateway.shadow import SHADOW_PATH, Copy, Shadow
from gateway.upstream import Upstream, UpstreamAnswer
from pyfunc.schema import example_listing
from tests.support.gateway import ALICE_KEY, fake_upstream, gateway_settings, read_log
from tests.support.processes import wait_until

AUTH = {"X-API-Key": ALICE_KEY}
CHAMPION, CHALLENGER = "3", "4"


def challenger_server(
    factor: float = 1.1, status: int = 200, hold: threading.Event | None = None
) -> type[http.server.BaseHTTPRequestHandler]:
    """A stand-in challenger: prices row i at factor * 1000 * (i + 1) UF (once `hold` is set,
    if given); records each request id it priced."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        seen: ClassVar[list[str]] = []

        def do_POST(self) -> None:
            body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if hold is not None:
                hold.wait(10)
            rows = len(body["inputs"]["type"])
            prices = [{"price": factor * 1000.0 * (i + 1)} for i in range(rows)]
            answer = orjson.dumps({"predictions": prices})
            Handler.seen.append(self.headers["X-Request-ID"])
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def served_file(path: Path, shadow_url: str | None) -> None:
    """The served-model file as the controller writes it: the champion's pool and, if given,
    the challenger's server as its `shadow` entry."""
    info = {"name": "property-friends", "version": CHAMPION, "servers": ["http://127.0.0.1:9"]}
    if shadow_url:
        info["shadow"] = {"version": CHALLENGER, "servers": [shadow_url], "pids": {shadow_url: 1}}
    path.write_bytes(orjson.dumps(info))


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """An app whose champion (a stub on the app's pool) prices row i at 1000 * (i + 1) UF."""
    apps = []

    def make(shadow_url: str | None, **env: str):
        settings = gateway_settings(tmp_path, **env)
        served_file(settings.model_info_path, shadow_url)
        app = create_app(settings)
        apps.append(app)
        pool = gateway_of(app).pool

        def champion(body: bytes, content_type: str, request_id: str):
            rows = len(orjson.loads(body)["inputs"]["type"])
            prices = [{"price": 1000.0 * (i + 1)} for i in range(rows)]
            answer = orjson.dumps({"predictions": prices})
            return UpstreamAnswer(200, answer, "application/json", 0.001), pool.version

        monkeypatch.setattr(pool, "predict", champion)
        return app

    yield make
    for app in apps:
        gateway_of(app).close()


def post(client, request_id: str, rows: int = 2):
    listings = [{**example_listing(), "net_usable_area": 60.0 + i} for i in range(rows)]
    body = orjson.dumps({"dataframe_records": listings})
    headers = {**AUTH, "X-Request-ID": request_id}
    return client.post("/invocations", data=body, content_type="application/json", headers=headers)


def counted(app, result: str) -> float:
    registry = gateway_of(app).metrics.registry
    return registry.get_sample_value("gateway_shadow_requests_total", {"result": result}) or 0.0


def stored(settings_path: Path, table: str) -> list[tuple]:
    with sqlite3.connect(settings_path) as db:
        return db.execute(
            f"SELECT request_id, row_index, model_version, price FROM {table} "
            "ORDER BY request_id, row_index"
        ).fetchall()


def test_every_copy_is_priced_by_the_challenger_and_stored_beside_the_champion(
    make_app, tmp_path: Path
) -> None:
    handler = challenger_server(factor=1.1)
    with fake_upstream(handler) as url:
        app = make_app(url, SHADOW_SHARE="1")
        client = app.test_client()
        answers = [post(client, f"req-{n}") for n in range(5)]
        wait_until(lambda: counted(app, "sent") == 5, 10, "5 copies sent")
        gateway = gateway_of(app)
        gateway.predictions.flush()
        gateway.request_log.flush()

    assert [(a.status_code, a.headers["X-Model-Version"]) for a in answers] == [(200, "3")] * 5
    assert {a.json["predictions"][1]["price"] for a in answers} == {2000.0}  # the champion's
    assert sorted(handler.seen) == [f"req-{n}" for n in range(5)]
    store = tmp_path / "predictions.db"
    champion = stored(store, "predictions")
    challenger = stored(store, "shadow_predictions")
    assert (
        [r[:2] for r in challenger]
        == [r[:2] for r in champion]
        == [(f"req-{n}", row) for n in range(5) for row in (0, 1)]
    )
    assert {(r[1], r[2], r[3]) for r in champion} == {(0, "3", 1000.0), (1, "3", 2000.0)}
    assert {(r[1], r[2], round(r[3], 6)) for r in challenger} == {
        (0, "4", 1100.0),
        (1, "4", 2200.0),
    }
    lines = [line for line in read_log(gateway.settings.gateway_request_log)]
    shadow = sorted(
        (line for line in lines if line["path"] == SHADOW_PATH), key=lambda x: x["request_id"]
    )
    assert [(s["request_id"], s["model_version"], s["champion_version"]) for s in shadow] == [
        (f"req-{n}", "4", "3") for n in range(5)
    ]
    assert shadow[0]["champion_predictions"] == [1000.0, 2000.0]
    assert [round(p, 6) for p in shadow[0]["predictions"]] == [1100.0, 2200.0]
    assert (counted(app, "dropped"), counted(app, "failed")) == (0, 0)


def test_no_challenger_or_a_share_of_zero_sends_no_copy(make_app) -> None:
    handler = challenger_server()
    with fake_upstream(handler) as url:
        for app in (make_app(None), make_app(url, SHADOW_SHARE="0")):
            client = app.test_client()
            assert [post(client, f"none-{n}").status_code for n in range(3)] == [200] * 3
            assert gateway_of(app).shadow.waiting() == 0
        time.sleep(0.3)
    assert handler.seen == []


def test_a_challenger_that_fails_costs_the_client_nothing_and_is_counted(make_app) -> None:
    with fake_upstream(challenger_server(status=500)) as url:
        app = make_app(url)
        client = app.test_client()
        assert [post(client, f"bad-{n}").status_code for n in range(3)] == [200] * 3
        wait_until(lambda: counted(app, "failed") == 3, 10, "3 failed copies")
    gateway = gateway_of(app)
    gateway.request_log.flush()
    shadow = [
        line
        for line in read_log(gateway.settings.gateway_request_log)
        if line["path"] == SHADOW_PATH
    ]
    assert {(s["status"], s["error_code"]) for s in shadow} == {(500, "status 500")}
    assert counted(app, "sent") == 0


def test_a_slow_challenger_never_slows_the_client_the_queue_drops_and_counts(make_app) -> None:
    """The challenger holds its first answer: one copy is being sent, two wait (SHADOW_QUEUE),
    the others are dropped at once; once it answers, the waiting ones are sent."""
    hold = threading.Event()
    with fake_upstream(challenger_server(hold=hold)) as url:
        app = make_app(url, SHADOW_QUEUE="2")
        client = app.test_client()
        assert post(client, "first").status_code == 200
        shadow = gateway_of(app).shadow
        wait_until(lambda: shadow.waiting() == 0, 5, "the first copy taken by the sender")
        started = time.perf_counter()
        statuses = [post(client, f"more-{n}").status_code for n in range(10)]
        seconds = time.perf_counter() - started
        assert (statuses, shadow.waiting()) == ([200] * 10, 2)
        assert counted(app, "dropped") == 8
        hold.set()
        wait_until(lambda: counted(app, "sent") == 3, 10, "the held and the waiting copies")
    assert seconds < 2  # ten requests while the challenger holds its answer for up to 10 s
    assert counted(app, "failed") == 0


def test_the_queue_is_bounded_and_a_closed_shadow_drops_what_waits(tmp_path: Path) -> None:
    results: list[str] = []
    pool = Pool(lambda url: Upstream(url, 1.0, 1.0, pool_size=1), 5.0)
    log = RequestLog(tmp_path / "requests.jsonl", on_lost=lambda n: None)
    shadow = Shadow(pool, 1.0, 3, log, None, count=results.append)  # not started: no sender
    shadow.use(["http://127.0.0.1:9"], CHALLENGER)
    record = RequestRecord("r", "POST", "/invocations")
    copy = Copy(record, b"{}", "application/json", b"{}", ["las condes"], None)

    for _ in range(5):
        if shadow.wants():
            shadow.offer(copy)

    assert (shadow.waiting(), results) == (3, ["dropped", "dropped"])
    shadow.use([], "")
    assert shadow.wants() is False  # the challenger left the served-model file
    shadow.close()
    log.close()
    assert (shadow.waiting(), results) == (0, ["dropped"] * 5)


def test_copies_wait_while_the_worker_answers_a_request(tmp_path: Path) -> None:
    handler = challenger_server()
    log = RequestLog(tmp_path / "requests.jsonl", on_lost=lambda n: None)
    results: list[str] = []
    with fake_upstream(handler) as url:
        pool = Pool(lambda u: Upstream(u, 1.0, 5.0, pool_size=1), 5.0)
        shadow = Shadow(pool, 1.0, 10, log, None, count=results.append)
        shadow.use([url], CHALLENGER)
        body = orjson.dumps({"inputs": {"type": ["casa"]}})
        copy = Copy(RequestRecord("busy", "POST", "/invocations"), body, "application/json",
                    b'{"predictions": [{"price": 1.0}]}', ["nunoa"], None)  # fmt: skip
        shadow.request_started()
        shadow.start().offer(copy)
        time.sleep(0.5)
        assert (shadow.waiting(), handler.seen) == (1, [])
        shadow.request_ended()
        wait_until(lambda: results == ["sent"], 5, "the copy sent once the worker is idle")
        shadow.close()
    log.close()
    assert handler.seen == ["busy"]
