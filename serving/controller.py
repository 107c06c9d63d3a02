"""Rollout controller: keeps a pool of model servers on the version MODEL_URI resolves to.

    python -m serving.controller [--host 127.0.0.1] [--public-host NAME]    (make controller)
    python -m serving.controller --stop     stop the servers the served-model file lists (make stop)

Every ROLLOUT_POLL_SECONDS it resolves MODEL_URI in the registry; a new version gets the checks
of `promote`, then servers of its own beside the old ones, then the served-model file, and the
old servers are drained and stopped (README, "How a promotion reaches traffic"). The latest
intent wins: a rollout whose version MODEL_URI no longer resolves to is abandoned (its servers
stopped, the old ones kept) and the newest target is rolled out at the next poll. Servers outlive
the controller; a restarted one adopts them. ROLLOUT_EXECUTOR=kubernetes rolls the model server
Deployment instead (`serving.deployment`).

It runs for weeks, so it holds neither MLflow nor pandas nor a model: it reads the registry
through `steps.registry_reader` (a tracking server's REST API with MLflow's credentials, or a
database store's tables), and downloads, checks and evaluates each version in a process of
its own (`serving.checks`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import click
from prometheus_client import CollectorRegistry, Counter, start_http_server

from config.errors import UserError
from config.settings import MODEL_INFO_CHECK_SECONDS, Settings
from serving import servers
from serving.checks import Checked, check_version, ensure_copy, evaluate_against, in_child
from serving.files import copy_path, has_copy, prune_copies, write_info
from serving.servers import Abandoned, Canary, Server, ServerError, Serving, no_check
from steps.gate import gate
from steps.params import Params, load_params
from steps.registry_reader import RegistryReader, registry_reader

logger = logging.getLogger(__name__)

RESULTS = ("served", "refused", "failed", "abandoned")
STARTING_FILE = "model-servers-starting.json"  # under STATE_DIR: servers not yet published
DRAIN_MARGIN_SECONDS = 1.0


class Refused(Exception):
    """The version fails the checks of promote."""


class Executor(Protocol):
    """Runs the pool: model server processes here, or a Deployment on Kubernetes."""

    def adopt(self) -> Serving | None:
        """What an earlier controller left serving, if it still serves."""

    def serve(
        self,
        checked: Canary,
        info: dict[str, Any],
        old: Serving | None,
        check_target: Callable[[], None],
    ) -> Serving:
        """Serve `info["uri"]`, every server pricing the `checked` canary, then retire `old`;
        ServerError (and `old` still serving) when it cannot. `check_target` raises Abandoned
        once the version is no longer wanted: it is called while the new servers start and
        right before they are published; then nothing new is left running, `old` serves."""

    def heal(self, serving: Serving, canary_of: Callable[[], Canary]) -> Serving:
        """Replace dead servers; `canary_of` gives the served version's canary."""


class Controller:
    """Brings the pool to what MODEL_URI resolves to, one `poll()` at a time."""

    def __init__(
        self,
        settings: Settings,
        params: Params,
        executor: Executor,
        registry: CollectorRegistry | None = None,
        reader: RegistryReader | None = None,
    ):
        self.settings, self.params, self.executor = settings, params, executor
        self.reader = reader or registry_reader(settings.mlflow_tracking_uri)
        self.rollouts = Counter(
            "model_rollouts", "Model versions rolled out, by result.", ["result"], registry=registry
        )
        for result in RESULTS:
            self.rollouts.labels(result)
        self.serving: Serving | None = None
        self._canary: Canary | None = None  # the serving version's (no model is kept)
        self._skip: str | None = None  # refused or failed: not tried again while targeted

    def poll(self) -> None:
        """Resolve MODEL_URI; roll out a new version; replace dead servers."""
        try:
            target = self.reader.resolve(self.settings.model_uri)
        except UserError as error:
            logger.warning("%s; serving what runs", error)
            target = None
        if target is not None:
            if self.serving is not None and target["version"] == self.serving.version:
                self._skip = None
            elif target["version"] != self._skip:
                self._roll_out(target)
                self.keep_served_copy_only()
        if self.serving is not None:
            self.serving = self.executor.heal(self.serving, self._served_canary)

    def _roll_out(self, target: dict[str, Any]) -> None:
        old, version = self.serving, target["version"]
        current = old.version if old else "none"
        uri = self.settings.model_uri
        logger.info("%s resolves to version %s (serving %s): checking it", uri, version, current)
        try:
            checked = self._check(target, old)
        except Refused as refusal:
            self._skip = version
            self.rollouts.labels("refused").inc()
            logger.warning(
                "version %s refused: %s; version %s keeps serving", version, refusal, current
            )
            return
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        info = {**target, "reference": checked.reference, "served_since": now}
        try:
            self.serving = self.executor.serve(
                checked.canary, info, old, self._target_check(version)
            )
        except Abandoned as change:
            self.rollouts.labels("abandoned").inc()
            logger.warning(
                "version %s abandoned: %s; version %s keeps serving", version, change, current
            )
            return
        except ServerError as error:
            self._skip = version
            self.rollouts.labels("failed").inc()
            logger.error("version %s not served: %s", version, error)
            return
        self._canary = checked.canary
        self.rollouts.labels("served").inc()

    def keep_served_copy_only(self) -> None:
        """The local copies of versions refused, abandoned or replaced go."""
        served = self.serving
        prune_copies(self.settings, keep=copy_path(served.info, self.settings) if served else None)

    def _check(self, target: dict[str, Any], old: Serving | None) -> Checked:
        """The checks of promote, in processes of their own on the version's local copy; what
        they found, or Refused with the reason."""
        try:
            checked = in_child(check_version, target, self.settings)
            if old is None:  # nothing serves: no version to be compared with
                return checked
            tags = self.reader.tags(target["name"], target["version"])
            if "verdict" not in tags:
                logger.info(
                    "version %s has no evaluation: evaluating it against version %s",
                    target["version"],
                    old.version,
                )
                in_child(
                    evaluate_against, target["version"], old.version, self.params, self.settings
                )
                tags = self.reader.tags(target["name"], target["version"])
        except UserError as error:
            raise Refused(str(error)) from None
        allowed, reason = gate(tags, force=False)
        if not allowed:
            raise Refused(reason)
        return checked

    def _target_check(self, version: str) -> Callable[[], None]:
        """Raises Abandoned when MODEL_URI resolves to another version than `version` now (the
        latest intent wins); a registry that cannot be read lets the rollout go on."""

        def check() -> None:
            try:
                now = self.reader.resolve(self.settings.model_uri)["version"]
            except UserError as error:
                logger.warning("%s; rolling version %s out all the same", error, version)
                return
            if now != version:
                raise Abandoned(f"{self.settings.model_uri} resolves to version {now} now")

        return check

    def _served_canary(self) -> Canary:
        """The served version's canary, from its local copy once after a restart."""
        if self._canary is None:
            assert self.serving is not None  # heal runs only while a version is served
            self._canary = in_child(check_version, self.serving.info, self.settings).canary
        return self._canary


class Processes:
    """The pool as single-worker model server processes started here, in sessions of their
    own; the served-model file lists them for the gateway."""

    def __init__(self, settings: Settings, host: str, public_host: str):
        self.settings, self.host, self.public_host = settings, host, public_host
        self._starting_path = settings.state_dir / STARTING_FILE

    def adopt(self) -> Serving | None:
        """The servers the served-model file lists that live and answer /ping; those an
        earlier controller was starting when it died are stopped."""
        data = _read(self.settings.model_info_path)
        pids = data.get("pids") or {}
        listed = [Server(url, int(pids[url])) for url in data.get("servers") or () if url in pids]
        orphans = _model_servers(_read(self._starting_path).get("pids") or {})
        servers.stop([s for s in orphans if s.pid not in pids.values()])
        self._starting_path.unlink(missing_ok=True)
        live = tuple(
            s
            for s in listed
            if servers.alive(s.pid) and servers.is_model_server(s.pid) and servers.ping(s.url)
        )
        if len(live) < len(listed):
            gone = ", ".join(s.url for s in listed if s not in live)
            logger.warning("not adopted (gone, or not answering /ping): %s", gone)
        if not live:
            return None
        serving = Serving({k: v for k, v in data.items() if k not in ("servers", "pids")}, live)
        which = ", ".join(f"{s.url} (pid {s.pid})" for s in live)
        logger.info(
            "adopted %d model server(s) of version %s: %s", len(live), serving.version, which
        )
        return serving

    def serve(
        self,
        checked: Canary,
        info: dict[str, Any],
        old: Serving | None,
        check_target: Callable[[], None],
    ) -> Serving:
        path = self._copy(info)
        started = self._start_checked(checked, path, self.settings.model_servers, check_target)
        if old is not None:  # every gateway worker reads the file within a second
            switch_at = time.time() + MODEL_INFO_CHECK_SECONDS + DRAIN_MARGIN_SECONDS
            info = {**info, "switch_at": switch_at}
        serving = self._publish(Serving(info, started))
        urls = ", ".join(s.url for s in started)
        logger.info("version %s takes traffic on %s", serving.version, urls)
        if old is not None:  # until what was sent to the old servers is answered
            answered = switch_at + self.settings.gateway_read_timeout_seconds
            time.sleep(max(0.0, answered - time.time()))
            servers.stop(old.servers)
        return serving

    def _start_checked(
        self,
        checked: Canary,
        model_path: Path,
        count: int,
        check_target: Callable[[], None] = no_check,
    ) -> tuple[Server, ...]:
        """`count` servers on the local copy `model_path`, each answering /ping and pricing the
        `checked` canary, `check_target` passed before, during and after; none left running on
        failure."""
        started: list[Server] = []
        try:
            check_target()
            for _ in range(count):
                started.append(
                    servers.start(self.settings, model_path, self.host, self.public_host)
                )
                pids = {s.url: s.pid for s in started}
                self._starting_path.write_text(json.dumps({"pids": pids}))
            servers.wait_ready(started, self.settings.model_start_timeout_seconds, check_target)
            for server in started:
                servers.check_canary(server, checked)
            check_target()  # the last look before the gateway sees them
        except BaseException:
            servers.stop(started)
            raise
        finally:
            self._starting_path.unlink(missing_ok=True)
        return tuple(started)

    def heal(self, serving: Serving, canary_of: Callable[[], Canary]) -> Serving:
        """Replace dead servers (and top the pool up to MODEL_SERVERS)."""
        live = tuple(s for s in serving.servers if servers.alive(s.pid))
        missing = self.settings.model_servers - len(live)
        if len(live) < len(serving.servers):
            dead = ", ".join(s.url for s in serving.servers if s not in live)
            logger.warning("model server(s) died: %s", dead)
            serving = self._publish(dataclasses.replace(serving, servers=live))
        if missing > 0:
            try:
                path = self._copy(serving.info)
                live += self._start_checked(canary_of(), path, missing)
            except (ServerError, UserError) as error:
                logger.error("could not replace model servers: %s", error)
            serving = self._publish(dataclasses.replace(serving, servers=live))
        return serving

    def _copy(self, info: dict[str, Any]) -> Path:
        """The version's local copy (made by its checks), downloaded again if it went."""
        if not has_copy(info, self.settings):
            in_child(ensure_copy, info, self.settings)
        return copy_path(info, self.settings)

    def _publish(self, serving: Serving) -> Serving:
        """Write the served-model file: the gateway's workers follow it."""
        pids = {s.url: s.pid for s in serving.servers}
        write_info(
            {**serving.info, "servers": list(pids), "pids": pids}, self.settings.model_info_path
        )
        return serving


def executor(settings: Settings, host: str, public_host: str) -> Executor:
    """The executor ROLLOUT_EXECUTOR names."""
    if settings.rollout_executor == "kubernetes":
        from serving.deployment import Deployment  # the `kubernetes` extra

        return Deployment.connect(settings)
    return Processes(settings, host, public_host or host)


def _model_servers(pids: dict[str, Any]) -> list[Server]:
    """The servers of `pids` (url -> pid) whose process still runs a model server."""
    return [Server(url, int(pid)) for url, pid in pids.items() if servers.is_model_server(int(pid))]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run(controller: Controller, stop: threading.Event) -> None:
    """Adopt, then poll every ROLLOUT_POLL_SECONDS until `stop` is set."""
    controller.serving = controller.executor.adopt()  # what an earlier controller left
    controller.keep_served_copy_only()
    while not stop.is_set():
        try:
            controller.poll()
        except Exception:  # the registry or a disk may fail; serving must go on
            logger.exception("rollout controller: unexpected error; trying again at next poll")
        stop.wait(controller.settings.rollout_poll_seconds)


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the model servers and /metrics listen on.",
)
@click.option(
    "--public-host",
    default="",
    help="Host name the gateway reaches the servers by (default: --host).",
)
@click.option(
    "--stop",
    "stop_servers",
    is_flag=True,
    help="Stop the servers the served-model file lists, then exit.",
)
def main(host: str, public_host: str, stop_servers: bool) -> None:
    """Keep a pool of model servers on MODEL_URI, rolling out every change it sees."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
        if stop_servers:
            servers.stop(_model_servers(_read(settings.model_info_path).get("pids") or {}))
            settings.model_info_path.unlink(missing_ok=True)  # nothing is served any more
            return
        # for the checks' processes (MLflow reads them there)
        os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
        os.environ["MLFLOW_REGISTRY_URI"] = settings.mlflow_tracking_uri
        registry = CollectorRegistry()
        pool = executor(settings, host, public_host)
        controller = Controller(settings, load_params(), pool, registry)
    except UserError as error:
        raise click.ClickException(str(error)) from None
    start_http_server(settings.controller_metrics_port, addr=host, registry=registry)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logger.info(
        "rollout controller: %s, %d server(s), polling every %g s, metrics on %s:%d",
        settings.model_uri,
        settings.model_servers,
        settings.rollout_poll_seconds,
        host,
        settings.controller_metrics_port,
    )
    run(controller, threading.Event())


if __name__ == "__main__":
    main()
