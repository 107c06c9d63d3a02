"""Faults around the gateway: a model server that hangs, trickles or is killed under load, a
request log whose disk is full, a corrupt model at promotion.

test_gateway_stack.py already covers one request to a stopped model server (503) and one to a
hung one (504); test_pipeline.py a version whose files were deleted. This module adds what
happens under concurrency, what is counted and logged, and the other ways a fault shows up.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import pytest
import requests

from pyfunc.schema import example_listing
from tests.support.gateway import (
    LoadClients,
    RunningGateway,
    Shot,
    fake_upstream,
    metric_samples,
    metric_sum,
    running_gateway,
)
from tests.support.stack import ModelServer, run_step, store_env
from tests.support.tracking import (
    MODEL,
    client_for,
    error_line,
    model_artifacts_dir,
    registry_state,
)
from tests.support.traffic import (
    ALICE,
    listings,
    metric,
    post,
    requests_total,
    settled_lines,
)

pytestmark = pytest.mark.integration

LOST_LINES = "gateway_request_log_errors_total"
PREDICTION = b'{"predictions": [{"price": 12000.0, "outside_training_range": ""}]}'


# A model server that is slow in a chosen way.


class FakeModelServer(http.server.BaseHTTPRequestHandler):
    """Answers /ping after `ping_delay` s; answers /invocations after `answer_delay` s, its
    body spread over `trickle_seconds` s, one byte at a time."""

    protocol_version = "HTTP/1.1"
    ping_delay = 0.0
    answer_delay = 0.0
    trickle_seconds = 0.0

    def do_GET(self) -> None:
        time.sleep(self.ping_delay)
        self._answer(b"\n")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.answer_delay)
        self._answer(PREDICTION)

    def _answer(self, body: bytes) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            pause = self.trickle_seconds / len(body)
            for start in range(len(body)):
                self.wfile.write(body[start : start + 1])
                self.wfile.flush()
                time.sleep(pause)

    def log_message(self, *args: object) -> None:
        pass


def behaving(**behaviour: float) -> type[FakeModelServer]:
    return type("SlowModelServer", (FakeModelServer,), behaviour)


def timed(call) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


# a stopping gateway worker waits for its idle keep-alive connections (up to the keep-alive):
# these tests close theirs.
CLOSE = {"Connection": "close"}


def with_id(request_id: str) -> dict[str, str]:
    return {**ALICE, **CLOSE, "X-Request-ID": request_id}


def test_concurrent_requests_to_a_hung_model_server_are_504_and_the_gateway_still_answers(
    tmp_path: Path,
) -> None:
    # six requests hang on the model server; /health does not wait behind them
    ids = [f"hung-{i}" for i in range(6)]
    with (
        fake_upstream(behaving(answer_delay=6)) as upstream,
        running_gateway(
            tmp_path, upstream, workers=2, extra_env={"GATEWAY_READ_TIMEOUT_SECONDS": "1"}
        ) as gateway,
    ):
        body = {"dataframe_records": listings(1)}
        with ThreadPoolExecutor(max_workers=len(ids)) as pool:
            pending = [
                pool.submit(timed, lambda i=i: post(gateway.url, body, with_id(i))) for i in ids
            ]
            time.sleep(0.3)
            health_seconds, health = timed(
                lambda: requests.get(f"{gateway.url}/health", headers=CLOSE, timeout=5)
            )
            ready = requests.get(f"{gateway.url}/ready", headers=CLOSE, timeout=5)
            answers = [future.result() for future in pending]

        assert (health.status_code, ready.status_code) == (200, 200)
        assert health_seconds < 0.5
        for seconds, response in answers:
            assert response.status_code == 504, response.text
            assert response.json()["error_code"] == "UPSTREAM_TIMEOUT"
            assert 1.0 <= seconds < 2.5
        lines = {line["request_id"]: line for line in settled_lines(gateway)}
        assert sorted(lines) == sorted(ids)
        assert {(line["status"], line["error_code"]) for line in lines.values()} == {
            (504, "UPSTREAM_TIMEOUT")
        }
        assert requests_total(gateway) == len(ids)
        assert metric(gateway, "gateway_upstream_up") == 1


def test_a_model_server_trickling_its_answer_is_cut_at_the_read_timeout(tmp_path: Path) -> None:
    """Each byte comes well within the read timeout, the whole answer takes 3 s: too slow."""
    with (
        fake_upstream(behaving(trickle_seconds=3)) as upstream,
        running_gateway(
            tmp_path, upstream, workers=1, extra_env={"GATEWAY_READ_TIMEOUT_SECONDS": "0.5"}
        ) as gateway,
    ):
        seconds, response = timed(
            lambda: post(gateway.url, {"dataframe_records": listings(1)}, {**ALICE, **CLOSE})
        )

    assert (response.status_code, seconds < 1.5) == (504, True), (
        f"{response.status_code} after {seconds:.1f} s: {response.text[:200]}"
    )
    assert response.json()["error_code"] == "UPSTREAM_TIMEOUT"


def test_ready_is_503_within_the_ping_timeout_when_ping_hangs(tmp_path: Path) -> None:
    with (
        fake_upstream(behaving(ping_delay=10)) as upstream,
        running_gateway(tmp_path, upstream, workers=1) as gateway,
    ):
        seconds, ready = timed(
            lambda: requests.get(f"{gateway.url}/ready", headers=CLOSE, timeout=15)
        )

        assert ready.status_code == 503
        assert ready.json()["error_code"] == "UPSTREAM_UNAVAILABLE"
        assert seconds < 3
        assert metric(gateway, "gateway_upstream_up") == 0


# The request log's disk is full.


def lost_lines(gateway: RunningGateway) -> float:
    """gateway_request_log_errors_total; asking for it loses one more line (this request's)."""
    return metric(gateway, LOST_LINES) or 0.0


def wait_for_lost_lines(gateway: RunningGateway, expected: float, timeout: float = 10) -> None:
    """Until the counter is `expected` plus the lines of the polls made here; fail if over."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        value = lost_lines(gateway)
        if value == expected + polls:
            return
        assert value < expected + polls, f"{value} lines counted lost, expected {expected}"
        assert time.monotonic() < deadline, f"{value} lines counted lost, expected {expected}"
        polls += 1
        time.sleep(0.1)


def test_a_full_disk_costs_log_lines_not_predictions_and_is_counted_and_reported(
    model_server: ModelServer, tmp_path: Path
) -> None:
    """/dev/full fails every write with ENOSPC, exactly as a full disk does, without needing
    a mount or root, and nothing to clean up if the test dies."""
    log = tmp_path / "requests.jsonl"
    log.symlink_to("/dev/full")
    body = {"dataframe_records": listings(3)}
    invalid = {"dataframe_records": [{**example_listing(), "net_area": "x"}]}
    direct = post(model_server.url, body).json()
    with running_gateway(
        tmp_path, model_server.url, info_path=model_server.info_path, workers=2
    ) as gateway:
        time.sleep(0.3)  # the start-up probes' lines are counted by now
        before = lost_lines(gateway)
        served = [post(gateway.url, body, with_id(f"full-{i}")) for i in range(20)]
        refused = [post(gateway.url, invalid, with_id(f"bad-{i}")) for i in range(5)]

        assert [r.status_code for r in served] == [200] * 20
        assert all(r.json() == direct for r in served)
        assert [r.json()["error_code"] for r in refused] == ["INVALID_FEATURES"] * 5
        wait_for_lost_lines(gateway, before + 1 + len(served) + len(refused))
        complaint = f"request log {log} cannot be written ([Errno 28] No space left on device)"
        assert complaint in (tmp_path / "gunicorn.log").read_text()
        assert requests.get(f"{gateway.url}/health", timeout=5).status_code == 200

        log.unlink()  # space again: the next lines go to a new file
        again = [post(gateway.url, body, with_id(f"again-{i}")) for i in range(5)]

        assert [r.status_code for r in again] == [200] * 5
        logged = Counter(line["request_id"] for line in settled_lines(gateway))
        assert logged == Counter(f"again-{i}" for i in range(5))


@contextlib.contextmanager
def tiny_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (mount -t tmpfs); /dev/full is tested above")
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, capture_output=True)


def fill_leaving(disk: Path, free_bytes: int) -> Path:
    """Fill `disk`, then free about `free_bytes` of it; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - free_bytes)
    return filler


def test_a_disk_filling_up_mid_line_leaves_no_partial_line(
    model_server: ModelServer, tmp_path: Path
) -> None:
    """A real file system that fills up while a line is written (a short write): the log must
    not keep half a line, which the next line, once there is space again, would be glued to."""
    body = {"dataframe_records": listings(3)}
    with (
        tiny_tmpfs(tmp_path / "disk", "64k") as disk,
        running_gateway(
            tmp_path,
            model_server.url,
            info_path=model_server.info_path,
            workers=1,
            extra_env={"GATEWAY_REQUEST_LOG": str(disk / "requests.jsonl")},
        ) as gateway,
    ):
        filler = fill_leaving(disk, 6000)
        filling = [post(gateway.url, body, with_id(f"fill-{i}")) for i in range(20)]
        time.sleep(0.3)
        filler.unlink()
        after = [post(gateway.url, body, with_id(f"after-{i}")) for i in range(3)]
        time.sleep(0.3)
        lines = gateway.request_log.read_bytes().splitlines()

    assert [r.status_code for r in filling + after] == [200] * 23
    assert lost_lines_were_counted(lines)
    unreadable = [line for line in lines if not is_json(line)]
    assert unreadable == [], [f"{line[:90]!r} ... {line[-90:]!r}" for line in unreadable]
    logged = Counter(json.loads(line)["request_id"] for line in lines)
    assert all(logged[f"after-{i}"] == 1 for i in range(3)), logged


def lost_lines_were_counted(lines: list[bytes]) -> bool:
    """The disk did fill: fewer fill- lines than requests."""
    return sum(b'"request_id":"fill-' in line for line in lines) < 20


def is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


# A corrupt model at promotion (a deleted one is in test_pipeline.py).


def _truncate_pipeline(files: Path) -> None:
    pipeline = files / "artifacts" / "pipeline.joblib"
    pipeline.write_bytes(pipeline.read_bytes()[: pipeline.stat().st_size // 2])


def _pipeline_is_something_else(files: Path) -> None:
    joblib.dump({"not": "a pipeline"}, files / "artifacts" / "pipeline.joblib")


def _garbage_mlmodel(files: Path) -> None:
    (files / "MLmodel").write_bytes(b"flavors: [\x00\xff not yaml")


def _profile_without_categories(files: Path) -> None:
    (files / "artifacts" / "profile.json").write_text("{}")


CORRUPTIONS = {
    "truncated-pipeline-pickle": _truncate_pipeline,
    "pipeline-replaced-by-another-object": _pipeline_is_something_else,
    "garbage-mlmodel": _garbage_mlmodel,
    "profile-without-categories": _profile_without_categories,
}


@pytest.fixture(scope="module")
def promotion_store(trained_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained store's database (its version 1 is champion, its files stay in
    the trained store); new versions and runs go to the copy only."""
    workdir = tmp_path_factory.mktemp("promotion")
    shutil.copy(trained_store / "mlflow.db", workdir / "mlflow.db")
    return workdir


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_model_is_refused_at_promotion_and_the_champion_kept(
    promotion_store: Path, corruption: str
) -> None:
    client = client_for(promotion_store)
    champion = client.get_model_version(MODEL, "1")
    files = promotion_store / corruption
    shutil.copytree(model_artifacts_dir(client, "1"), files)
    CORRUPTIONS[corruption](files)
    version = str(client.create_model_version(MODEL, str(files), run_id=champion.run_id).version)
    before = registry_state(client)

    result = run_step(
        "steps.promote",
        "--model-version",
        version,
        "--force",
        "true",
        env={**store_env(promotion_store), "MLFLOW_EXPERIMENT_NAME": "promotion-faults"},
        cwd=promotion_store,
        check=False,
    )

    line = error_line(result)
    assert line.startswith(
        f"Error: models:/{MODEL}/{version} cannot be loaded or cannot price its input example ("
    )
    assert line.endswith("; the champion is unchanged")
    assert registry_state(client) == before
    assert before["aliases"] == {"champion": 1}
    assert before["versions"][int(version)] == {"stage": "None", "tags": {}}


# The model server killed and restarted under load.


def kill(server: ModelServer) -> None:
    """SIGKILL the model server's whole process group (mlflow, uvicorn and its workers)."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    server.process = None
    server.stop()  # returns once /ping no longer answers


@pytest.mark.slow
def test_model_server_killed_and_restarted_under_load(
    model_server: ModelServer, tmp_path: Path
) -> None:
    shot = Shot("one-listing", json.dumps({"dataframe_records": listings(1)}).encode(), 1, ALICE)
    with running_gateway(
        tmp_path, model_server.url, info_path=model_server.info_path, workers=2
    ) as gateway:
        workers = gateway.worker_pids()
        load = LoadClients(gateway.url, [shot], clients=8, prefix="kill", pause=0.01).start()
        try:
            time.sleep(3)
            killed_at = time.monotonic()
            kill(model_server)
            time.sleep(3)
            ready_while_down = requests.get(f"{gateway.url}/ready", timeout=5).status_code
            restart_at = time.monotonic()
            model_server.start()
            back_at = time.monotonic()
            time.sleep(4)
        finally:
            sent = load.stop()
            if model_server.process is None:
                model_server.start()
        lines = settled_lines(gateway)
        counted = {
            status: requests_total_with_status(gateway, status) for status in (200, 502, 503)
        }
        ready_after = requests.get(f"{gateway.url}/ready", timeout=5).status_code
        upstream_up = metric(gateway, "gateway_upstream_up")
        same_workers = gateway.worker_pids() == workers

    statuses = Counter(s.status for s in sent)
    # A request in flight when the server dies may see its connection dropped: 502, as any
    # proxy answers for an upstream that failed mid-request. Anything sent later is a 503.
    in_flight = [s for s in sent if s.status == 502]
    odd = [
        (s.status, s.error_code, round(s.started - killed_at, 3), round(s.ended - killed_at, 3))
        for s in sent
        if s.status not in (200, 503)
    ]
    assert set(statuses) - {502} == {200, 503} and all(
        s.error_code == "UPSTREAM_ERROR" and s.started < killed_at + 0.2 and s.ended < killed_at + 1
        for s in in_flight
    ), (
        f"{statuses}; killed at 0, restarted at {restart_at - killed_at:.2f} s, back at "
        f"{back_at - killed_at:.2f} s; other answers (status, code, sent, answered): {odd}"
    )
    assert all(s.status == 200 for s in sent if s.ended < killed_at)
    down = [s for s in sent if killed_at + 0.5 < s.started and s.ended < restart_at]
    assert len(down) > 50 and all(s.status == 503 for s in down)
    after = [s for s in sent if s.started > back_at]
    assert len(after) > 50 and all(s.status == 200 for s in after)
    assert (ready_while_down, ready_after, upstream_up, same_workers) == (503, 200, 1, True)
    assert Counter(line["request_id"] for line in lines) == Counter(s.request_id for s in sent)
    assert {line["request_id"]: line["status"] for line in lines} == {
        s.request_id: s.status for s in sent
    }
    assert counted == {status: statuses[status] for status in (200, 502, 503)}
    assert (tmp_path / "gunicorn.log").read_text().count("Booting worker") == 2


def requests_total_with_status(gateway: RunningGateway, status: int) -> float:
    return metric_sum(
        metric_samples(gateway),
        "gateway_requests_total",
        endpoint="/invocations",
        status=str(status),
    )
