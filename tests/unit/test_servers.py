"""Model server processes of the pool: the canary check against a local HTTP server, and
stopping a whole process group (SIGTERM, then SIGKILL for what ignores it)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import time

import pytest

from config.settings import Settings
from serving import servers
from serving.servers import Abandoned, Canary, Server, ServerError
from tests.support.gateway import fake_upstream

EXPECTED = [
    {"price": 11571.4, "outside_training_range": ""},
    {"price": 9000.25, "outside_training_range": "n_rooms"},
]


def answering(predictions: object, status: int = 200):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"predictions": predictions}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


def test_a_server_pricing_the_canary_like_the_model_passes():
    with fake_upstream(answering(EXPECTED)) as url:
        servers.check_canary(Server(url, 0), Canary(b"{}", EXPECTED))


@pytest.mark.parametrize(
    ("predictions", "status"),
    [
        (
            [
                {"price": 11571.5, "outside_training_range": ""},
                {"price": 9000.25, "outside_training_range": "n_rooms"},
            ],
            200,
        ),
        ([{"price": 11571.4, "outside_training_range": ""}], 200),
        ([{"price": 11571.4}, {"price": 9000.25}], 200),
        ("not a list", 200),
    ],
)
def test_a_server_pricing_the_canary_differently_is_refused(predictions, status):
    with (
        fake_upstream(answering(predictions, status)) as url,
        pytest.raises(ServerError, match="did not price the canary like the model"),
    ):
        servers.check_canary(Server(url, 0), Canary(b"{}", EXPECTED))


def test_stop_ends_the_whole_group_even_a_process_ignoring_sigterm():
    stubborn = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
    time.sleep(0.5)
    server = Server("http://127.0.0.1:1", process.pid)
    assert servers.alive(process.pid)
    started = time.monotonic()
    servers.stop([server], grace=1.0)
    assert not servers.alive(process.pid)
    assert time.monotonic() - started < 5
    group = subprocess.run(
        ["ps", "-o", "stat=", "-g", str(process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert [state for state in group if not state.startswith("Z")] == []  # zombies are dead


def test_only_a_process_running_mlflow_s_scoring_server_counts_as_a_model_server():
    scoring_app = servers.SCORING_APP
    lookalike = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", scoring_app])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert servers.is_model_server(lookalike.pid)
        assert not servers.is_model_server(other.pid)
    finally:
        for process in (lookalike, other):
            process.kill()
            process.wait()
    assert not servers.is_model_server(lookalike.pid)


def test_waiting_for_servers_stops_when_the_target_moves():
    looks: list[float] = []

    def check_target() -> None:
        looks.append(time.monotonic())
        if len(looks) == 3:
            raise Abandoned("models:/m@champion resolves to version 1 now")

    never_ready = Server("http://127.0.0.1:9", os.getpid())  # alive, answers no /ping
    with pytest.raises(Abandoned) as abandoned:
        servers.wait_ready([never_ready], timeout=30, check_target=check_target)
    assert str(abandoned.value) == "models:/m@champion resolves to version 1 now"
    assert len(looks) == 3 and looks[-1] - looks[0] < 5


def test_the_scoring_command_is_the_one_mlflow_builds(tmp_path):
    """Built without importing MLflow (the controller does not): the same command and
    environment as MLflow's own `scoring_server.get_cmd`, run under the venv's Python."""
    from mlflow.pyfunc import scoring_server

    settings = Settings.from_env({"MODEL_TIMEOUT_SECONDS": "17"})
    command, env = servers.serve_command(settings, tmp_path, "127.0.0.1", 5123, workers=2)
    mlflow_command, mlflow_env = scoring_server.get_cmd(
        str(tmp_path), port=5123, host="127.0.0.1", timeout=17, nworkers=2
    )

    assert command == [sys.executable, "-m", *mlflow_command.split()]
    assert env == {"OMP_NUM_THREADS": "1", **mlflow_env}


@pytest.mark.parametrize("by", ["adopt", "--stop"])
def test_servers_left_draining_by_a_dead_controller_are_stopped(tmp_path, by):
    """A controller killed while the old version's servers drained (unlisted already, not yet
    stopped): the next controller's adoption, or `--stop`, stops them; an unrelated process
    whose pid the file names is left alone."""
    from click.testing import CliRunner

    from serving import controller

    settings = Settings.from_env({"STATE_DIR": str(tmp_path)})
    draining = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", servers.SCORING_APP],
        start_new_session=True,
    )
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    unlisted = {"http://127.0.0.1:1": draining.pid, "http://127.0.0.1:2": unrelated.pid}
    (tmp_path / controller.UNLISTED_FILE).write_text(json.dumps({"pids": unlisted}))
    try:
        if by == "adopt":
            assert controller.Processes(settings, "127.0.0.1", "127.0.0.1").adopt() is None
        else:
            env = {"STATE_DIR": str(tmp_path)}
            assert CliRunner().invoke(controller.main, ["--stop"], env=env).exit_code == 0
        assert draining.wait(timeout=15) is not None
        assert unrelated.poll() is None
        assert not (tmp_path / controller.UNLISTED_FILE).exists()
    finally:
        for process in (draining, unrelated):
            process.kill()
            process.wait()
