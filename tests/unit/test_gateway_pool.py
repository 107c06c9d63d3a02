"""The model server pool on the real Upstream client against tiny local HTTP servers: which
server gets a request, who goes out of rotation, what is retried and what never is."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from gateway import pool as pool_module
from gateway.errors import GatewayError
from gateway.pool import Pool
from gateway.upstream import Upstream
from tests.support.gateway import fake_upstream
from tests.support.processes import free_port

ANSWER = b'{"predictions": [{"price": 1.0}]}'


def server(
    name: str,
    status: int = 200,
    delay: float = 0.0,
    seen: list[str] | None = None,
    drop: bool = False,
) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler answering `status` after `delay` s (or, with `drop`, closing the connection
    without an answer); records `name` in `seen` per POST."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if seen is not None:
                seen.append(name)
            time.sleep(delay)
            if drop:
                self.close_connection = True
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ANSWER)))
            self.end_headers()
            self.wfile.write(ANSWER)

        do_GET = do_POST

        def log_message(self, *args) -> None:
            pass

    return Handler


def make_pool(
    urls: list[str],
    version: str = "1",
    read_timeout: float = 2.0,
    out_seconds: float = 30.0,
    states: list | None = None,
) -> Pool:
    def client(url: str) -> Upstream:
        return Upstream(url, connect_timeout=1.0, read_timeout=read_timeout, pool_size=8)

    pool = Pool(
        client,
        out_seconds,
        on_state=lambda h, t: states.append((h, t)) if states is not None else None,
    )
    pool.use(urls, version)
    return pool


def predict(pool: Pool, request_id: str = "r") -> tuple[int, str]:
    answer, version = pool.predict(b"{}", "application/json", request_id)
    return answer.status, version


@contextlib.contextmanager
def servers(*handlers) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(fake_upstream(h)) for h in handlers]


def test_one_client_at_a_time_is_answered_by_the_first_server():
    seen: list[str] = []
    with servers(server("a", seen=seen), server("b", seen=seen)) as urls:
        pool = make_pool(urls)
        for n in range(6):
            assert predict(pool, f"r{n}") == (200, "1")
        pool.use(list(reversed(urls)), "2")
        assert predict(pool, "after") == (200, "2")
    assert seen == ["a"] * 6 + ["b"]


def test_the_server_with_fewer_outstanding_requests_gets_the_next_one():
    seen: list[str] = []
    with servers(server("slow", delay=1.0, seen=seen), server("fast", seen=seen)) as urls:
        pool = make_pool(urls)
        first = threading.Thread(target=predict, args=(pool, "long"))
        first.start()
        while not seen:
            time.sleep(0.01)
        busy = seen[0]
        for n in range(4):
            predict(pool, f"r{n}")
        first.join()
    assert seen[1:] == ["fast" if busy == "slow" else "slow"] * 4


def test_a_refused_connection_is_retried_on_another_server_and_benched():
    seen: list[str] = []
    states: list[tuple[int, int]] = []
    dead = f"http://127.0.0.1:{free_port()}"
    with servers(server("alive", seen=seen)) as (alive,):
        pool = make_pool([dead, alive], states=states)
        results = [predict(pool, f"r{n}") for n in range(4)]
    assert results == [(200, "1")] * 4
    assert seen == ["alive"] * 4
    assert states[0] == (2, 2) and states[-1] == (1, 2)  # the dead one out of rotation


def test_a_connection_dropped_without_an_answer_is_retried_on_another_server():
    seen: list[str] = []
    with servers(server("dying", drop=True, seen=seen), server("good", seen=seen)) as urls:
        pool = make_pool(urls)
        results = [predict(pool, f"r{n}") for n in range(4)]
    assert results == [(200, "1")] * 4
    assert seen.count("good") == 4
    assert 1 <= seen.count("dying") <= 2  # then out of rotation


def test_a_5xx_answer_is_returned_not_retried_and_benches_the_server():
    seen: list[str] = []
    with servers(server("broken", status=500, seen=seen), server("good", seen=seen)) as urls:
        pool = make_pool(urls)
        statuses = sorted(predict(pool, f"r{n}")[0] for n in range(2))
        later = [predict(pool, f"s{n}")[0] for n in range(4)]
    assert statuses == [200, 500]
    assert later == [200] * 4
    assert seen.count("broken") == 1


def test_a_benched_server_comes_back_after_the_out_of_rotation_time(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(pool_module.time, "monotonic", lambda: clock[0])
    seen: list[str] = []
    states: list[tuple[int, int]] = []
    with servers(server("broken", status=503, seen=seen), server("good", seen=seen)) as urls:
        pool = make_pool(urls, out_seconds=5.0, states=states)
        for n in range(2):
            predict(pool, f"r{n}")
        for n in range(4):
            predict(pool, f"s{n}")
        assert seen.count("broken") == 1
        assert states == [(2, 2), (1, 2)]  # reported once per change
        clock[0] += 5.0
        predict(pool, "t0")  # reported back in rotation before it is tried
        assert states[2] == (2, 2)
        for n in range(1, 4):
            predict(pool, f"t{n}")
    assert seen.count("broken") == 2  # back once, still failing: out again
    assert states == [(2, 2), (1, 2), (2, 2), (1, 2)]


def test_a_read_timeout_is_never_retried():
    seen: list[str] = []
    with servers(
        server("hung", delay=1.5, seen=seen), server("hung2", delay=1.5, seen=seen)
    ) as urls:
        pool = make_pool(urls, read_timeout=0.5)
        with pytest.raises(GatewayError) as caught:
            predict(pool)
        time.sleep(1.2)  # let the hung handler finish before the servers shut down
    assert caught.value.code == "UPSTREAM_TIMEOUT"
    assert len(seen) == 1


def test_every_server_refusing_is_503_after_two_tries():
    pool = make_pool([f"http://127.0.0.1:{free_port()}" for _ in range(3)])
    with pytest.raises(GatewayError) as caught:
        predict(pool)
    assert (caught.value.status, caught.value.code) == (503, "UPSTREAM_UNAVAILABLE")


def test_a_new_generation_switches_servers_and_version_together():
    seen: list[str] = []
    with servers(server("old", seen=seen), server("new", seen=seen)) as (old, new):
        pool = make_pool([old], version="1")
        assert predict(pool) == (200, "1")
        kept = pool._current.members[0]
        pool.use([new, old], "2")
        assert pool._current.members[1] is kept  # a known server keeps its connections
        pool.use([new], "2")
        assert [predict(pool, f"r{n}") for n in range(3)] == [(200, "2")] * 3
    assert seen == ["old", "new", "new", "new"]


def test_ping_is_true_when_any_server_answers():
    with servers(server("alive")) as (alive,):
        assert make_pool([f"http://127.0.0.1:{free_port()}", alive]).ping()
    assert not make_pool([f"http://127.0.0.1:{free_port()}"]).ping()
