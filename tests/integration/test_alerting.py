"""An alert from the real gateway to the webhook receiver: the gateway (gunicorn, 2 workers)
loses its request-log lines, a real Prometheus scraping it fires `RequestLogLinesLost` from
docker/prometheus/alerts.yml, a real Alertmanager with docker/alertmanager/alertmanager.yml
(its webhook pointed here, its first wait shortened) delivers it."""

from __future__ import annotations

import contextlib
import http.server
import json
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from config.settings import PROJECT_DIR
from tests.support.gateway import fake_upstream, running_gateway
from tests.support.processes import free_port
from tests.support.prometheus import running_alertmanager, running_prometheus, wait_for

pytestmark = pytest.mark.integration

ALERTMANAGER_CONFIG = PROJECT_DIR / "docker" / "alertmanager" / "alertmanager.yml"
LOST = 5


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[str, queue.Queue]]:
    """An HTTP endpoint that queues each JSON document POSTed to it; its URL and the queue."""
    received: queue.Queue = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    with fake_upstream(Handler) as url:
        yield f"{url}/alerts", received


def test_lost_request_log_lines_reach_the_webhook_as_an_alert(tmp_path: Path) -> None:
    unwritable = tmp_path / "a-folder"  # the request log's path is a folder: lines are lost
    unwritable.mkdir()
    with contextlib.ExitStack() as stack:
        url, received = stack.enter_context(webhook_receiver())
        config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
        config["route"]["group_wait"] = "1s"
        for receiver in config["receivers"]:
            for webhook in receiver["webhook_configs"]:
                webhook["url"] = url
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        alertmanager = stack.enter_context(
            running_alertmanager(tmp_path, tmp_path / "alertmanager.yml")
        )
        gateway = stack.enter_context(
            running_gateway(
                tmp_path / "gateway",
                f"http://127.0.0.1:{free_port()}",
                extra_env={"GATEWAY_REQUEST_LOG": str(unwritable)},
            )
        )
        prometheus = stack.enter_context(
            running_prometheus(tmp_path, {"gateway": f"127.0.0.1:{gateway.port}"}, alertmanager)
        )
        # every request's line is lost, Prometheus' scrapes included
        for _ in range(LOST):
            assert requests.get(f"{gateway.url}/health", timeout=5).status_code == 200
        wait_for(prometheus, f"sum(gateway_request_log_errors_total) >= {LOST}", timeout=20)
        document = received.get(timeout=30)
    (alert,) = document["alerts"]
    assert (document["status"], alert["labels"]["alertname"]) == ("firing", "RequestLogLinesLost")
    assert alert["labels"]["severity"] == "warning"
    assert "request-log line(s) lost in 5 minutes" in alert["annotations"]["summary"]
    assert "GATEWAY_REQUEST_LOG" in alert["annotations"]["description"]
