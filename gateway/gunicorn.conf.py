"""gunicorn configuration of the gateway:

    gunicorn -c gateway/gunicorn.conf.py 'gateway.app:create_app()'

Everything comes from `Settings.from_env()`: bind GATEWAY_HOST:GATEWAY_PORT, GATEWAY_WORKERS
processes serving GATEWAY_CONNECTIONS client connections each. The worker is gevent's WSGI
server (`gateway.worker`): the gateway is an I/O-bound proxy, and greenlets overlap the waits on
the model servers for less CPU per request than gunicorn's threads (measured in README,
Benchmarks).
Settings, API keys included, are checked here, in the master: a bad value stops gunicorn with
one line instead of a crash loop of workers. PROMETHEUS_MULTIPROC_DIR is set here, before any
worker imports prometheus_client, to a directory under STATE_DIR emptied at start; `child_exit`
marks dead workers so that live gauges drop them.
"""

from __future__ import annotations

import logging
import os
import sys

from config.settings import Settings, SettingsError
from gateway.auth import load_keys
from gateway.limits import state_path
from gateway.worker import KEEPALIVE_SECONDS, GatewayWorker

try:
    _settings = Settings.from_env()
    load_keys(_settings)
except SettingsError as _error:
    sys.exit(f"gateway: {_error}")

METRICS_DIR = _settings.state_dir / f"prometheus-gateway-{_settings.gateway_port}"
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)

wsgi_app = "gateway.app:create_app()"
bind = f"{_settings.gateway_host}:{_settings.gateway_port}"
workers = _settings.gateway_workers
worker_class = GatewayWorker
worker_connections = _settings.gateway_connections
preload_app = False  # each worker imports prometheus_client after the variable above is set
timeout = int(max(30, 2 * _settings.gateway_read_timeout_seconds + 5))  # worker heartbeat
graceful_timeout = 15
keepalive = KEEPALIVE_SECONDS
accesslog = None  # the gateway writes its own request log (GATEWAY_REQUEST_LOG)
errorlog = "-"
# gunicorn >= 25 opens a control socket in $HOME by default: one path shared by every
# gunicorn of the user, outside the project. The gateway needs no runtime control.
control_socket_disable = True


def on_starting(server) -> None:
    """Master, before the workers: an empty metrics directory, new rate limits and the
    gateway's logging."""
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in METRICS_DIR.glob("*.db"):
        stale.unlink()
    state_path(_settings).unlink(missing_ok=True)  # the workers' shared rate limits
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    )
    gateway_logger = logging.getLogger("gateway")
    gateway_logger.addHandler(handler)
    gateway_logger.setLevel(logging.INFO)
    gateway_logger.propagate = False
    server.log.info(
        "gateway metrics in %s; model servers: those %s lists, else %s",
        METRICS_DIR,
        _settings.model_info_path,
        _settings.gateway_upstream_url,
    )


def worker_exit(server, worker) -> None:
    """Worker process, on its way out: write the request-log lines still queued."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("gateway")
    if state is not None:
        state.close()


def child_exit(server, worker) -> None:
    """Master: forget the dead worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
