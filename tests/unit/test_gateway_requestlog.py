"""The request log: one whole JSON line per request, never blocking, failures counted."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

from config.settings import PROJECT_DIR
from gateway.app import create_app, gateway_of
from gateway.requestlog import (
    BATCH_LINES,
    RequestLog,
    RequestRecord,
    _cut_partial_line,
    iso_utc,
)
from tests.support.gateway import gateway_settings, read_log

FIELDS = {
    "time",
    "request_id",
    "key_id",
    "method",
    "path",
    "status",
    "latency_ms",
    "upstream_latency_ms",
    "rows",
    "model_version",
    "error_code",
}


def last_line(app, tmp_path) -> dict:
    gateway_of(app).request_log.flush()
    return read_log(tmp_path / "requests.jsonl")[-1]


def test_401_line(tmp_path, app):
    response = app.test_client().get("/model", headers={"X-Request-ID": "req-401"})
    line = last_line(app, tmp_path)
    assert set(line) == FIELDS
    assert response.headers["X-Request-ID"] == "req-401"
    assert {k: v for k, v in line.items() if k not in ("time", "latency_ms")} == {
        "request_id": "req-401",
        "key_id": None,
        "method": "GET",
        "path": "/model",
        "status": 401,
        "upstream_latency_ms": None,
        "rows": None,
        "model_version": "unknown",
        "error_code": "MISSING_API_KEY",
    }
    assert line["time"].endswith("Z")
    assert line["latency_ms"] >= 0


def test_503_line(tmp_path, app):
    app.test_client().get("/ready")
    line = last_line(app, tmp_path)
    assert (line["path"], line["status"], line["error_code"]) == (
        "/ready",
        503,
        "UPSTREAM_UNAVAILABLE",
    )


def test_iso_utc():
    assert iso_utc(0.5) == "1970-01-01T00:00:00.500Z"


def test_lines_from_many_threads_stay_whole(tmp_path):
    lost: list[int] = []
    log = RequestLog(tmp_path / "deep" / "requests.jsonl", lost.append)

    def emit(worker: int) -> None:
        for i in range(200):
            record = RequestRecord(f"{worker}-{i}", "GET", "/x" * 50)
            log.emit(lambda record=record: record.fields(200, 1.0))

    threads = [threading.Thread(target=emit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    ids = [line["request_id"] for line in read_log(tmp_path / "deep" / "requests.jsonl")]
    assert len(ids) == len(set(ids)) == 1600
    assert lost == []


def test_lines_queued_together_are_written_together_in_order(tmp_path):
    """A write per batch of queued lines, not per line (the file is opened for each write)."""
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path, lambda n: None)
    writes: list[bytes] = []
    write = log._write
    log._write = lambda data: (writes.append(data), write(data))
    lines = 3 * BATCH_LINES
    for n in range(lines):
        log.emit(lambda n=n: {"n": n})
    log.close()
    assert [line["n"] for line in read_log(path)] == list(range(lines))
    assert len(writes) <= 3 + 2  # full batches, and at most two cut by the thread waking
    assert b"".join(writes) == path.read_bytes()


def test_unwritable_file_counts_lost_lines_and_complains_once(tmp_path, caplog):
    target = tmp_path / "is-a-directory"
    target.mkdir()
    lost: list[int] = []
    log = RequestLog(target, lost.append)
    with caplog.at_level(logging.ERROR, logger="gateway.requestlog"):
        for _ in range(3):
            log.emit(dict)
            log.flush()
    log.close()
    assert sum(lost) == 3
    complaints = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(complaints) == 1


def test_request_still_served_when_log_fails(tmp_path):
    (tmp_path / "requests.jsonl").mkdir()
    app = create_app(gateway_settings(tmp_path))
    assert app.test_client().get("/health").status_code == 200
    gateway_of(app).request_log.flush()
    assert (
        gateway_of(app).metrics.registry.get_sample_value("gateway_request_log_errors_total") == 1
    )
    gateway_of(app).close()


def test_close_writes_queued_lines_and_later_lines_synchronously(tmp_path):
    log = RequestLog(tmp_path / "requests.jsonl", lambda n: None)
    for i in range(50):
        log.emit(lambda i=i: {"n": i})
    log.close()
    log.emit(lambda: {"n": 50})
    assert [line["n"] for line in read_log(tmp_path / "requests.jsonl")] == list(range(51))


def test_existing_file_is_appended_to(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b'{"n": 0}\n')
    log = RequestLog(path, lambda n: None)
    log.emit(lambda: {"n": 1})
    log.close()
    assert [line["n"] for line in read_log(path)] == [0, 1]


def test_a_short_write_cuts_the_partial_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b'{"n": 0}\n')
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        written = os.write(fd, b'{"n": 1')  # as far as a short write got
        _cut_partial_line(fd, written)
    finally:
        os.close(fd)
    assert path.read_bytes() == b'{"n": 0}\n'


def test_a_line_that_cannot_be_rendered_is_counted_lost(tmp_path):
    lost: list[int] = []
    log = RequestLog(tmp_path / "requests.jsonl", lost.append)
    log.emit(lambda: {"n": object()})
    log.emit(lambda: {"n": 1})
    log.close()
    assert lost == [1]
    assert read_log(tmp_path / "requests.jsonl") == [{"n": 1}]


def test_a_renamed_file_is_rotated_with_no_line_lost_or_cut(tmp_path):
    """logrotate renames the file: the next line starts a new one, as long as lines come."""
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path, lambda n: None)
    for n in range(3):
        log.emit(lambda n=n: {"n": n})
    log.flush()
    path.rename(tmp_path / "requests.jsonl.1")
    for n in range(3, 5):
        log.emit(lambda n=n: {"n": n})
    log.close()
    assert [line["n"] for line in read_log(tmp_path / "requests.jsonl.1")] == [0, 1, 2]
    assert [line["n"] for line in read_log(path)] == [3, 4]


WRITER = """
import sys
from pathlib import Path
from gateway.requestlog import RequestLog, STDOUT

log = RequestLog(STDOUT, lambda n: sys.exit("line lost"))
for i in range(int(sys.argv[2])):
    log.emit(lambda i=i: {"writer": sys.argv[1], "i": i, "features": "x" * 300_000})
log.close()
"""


def test_stdout_lines_of_several_processes_on_one_pipe_stay_whole(tmp_path):
    """Gunicorn's workers share the container's stdout, a pipe: lines of 300 kB (a pipe holds
    64 kB, and keeps only writes of up to 4 kB whole) from three processes at once come out
    whole, none lost. Without the lock, lines come out cut into one another."""
    writers, lines_each = 3, 30
    read_end, write_end = os.pipe()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(n), str(lines_each)],
            stdout=write_end,
            cwd=PROJECT_DIR,
            env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        )
        for n in range(writers)
    ]
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    assert [process.wait(60) for process in processes] == [0] * writers
    lines = [json.loads(line) for line in output.splitlines()]  # each line whole JSON
    assert sorted((line["writer"], line["i"]) for line in lines) == sorted(
        (str(n), i) for n in range(writers) for i in range(lines_each)
    )


def test_gateway_logs_each_request_as_one_json_line_on_stdout(tmp_path, capfd):
    app = create_app(gateway_settings(tmp_path, GATEWAY_REQUEST_LOG="-"))
    response = app.test_client().get("/health", headers={"X-Request-ID": "to-stdout"})
    gateway_of(app).close()
    (line,) = [json.loads(text) for text in capfd.readouterr().out.splitlines()]
    assert (line["request_id"], line["path"], line["status"]) == ("to-stdout", "/health", 200)
    assert set(line) >= FIELDS
    assert response.status_code == 200
    assert not (tmp_path / "-").exists()
