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

Beside it, the challenger: when CHALLENGER_URI (default models:/MODEL_NAME@challenger) resolves
to another version than the served one, that version gets the same checks but the gate (it is
there to be compared, not to serve), then SHADOW_SERVERS servers of its own, at a lower CPU
priority than the pool's (SHADOW_NICENESS: on a shared machine the copies wait, the clients do
not), published as the served-model file's `shadow` entry; the gateway copies a share of the
traffic to them and never answers a client from them. When the alias goes or moves, they stop
(the latest intent wins, as for the champion).

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import click
from prometheus_client import CollectorRegistry, Counter, start_http_server

from config.errors import UserError
from config.settings import MODEL_INFO_CHECK_SECONDS, NO_CHALLENGER, Settings
from serving import servers
from serving.checks import Checked, check_version, ensure_copy, evaluate_against, in_child
from serving.files import copy_path, has_copy, prune_copies, write_info
from serving.servers import Abandoned, Canary, Server, ServerError, Serving, no_check
from steps.gate import gate
from steps.params import Params, load_params
from steps.registry_reader import NotFound, RegistryReader, registry_reader

logger = logging.getLogger(__name__)

RESULTS = ("served", "refused", "failed", "abandoned")
# under STATE_DIR: servers of ours the served-model file does not list, starting or draining
UNLISTED_FILE = "model-servers-unlisted.json"
DRAIN_MARGIN_SECONDS = 1.0
SHADOW = "shadow"  # the served-model file's entry of the challenger's servers
SHADOW_NICENESS = 19  # CFS weight 15 against 1024: on busy cores, what the pool leaves


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

    def adopt_shadow(self) -> Serving | None:
        """The challenger's servers an earlier controller left, if they still serve."""

    def serve_shadow(
        self, checked: Canary, info: dict[str, Any], check_target: Callable[[], None]
    ) -> Serving:
        """Serve `info["uri"]` in shadow, every server pricing the `checked` canary; as
        `serve`, with no old servers to retire (`stop_shadow` did)."""

    def stop_shadow(self, shadow: Serving) -> None:
        """Unpublish the challenger's servers, then stop them."""

    def heal_shadow(self, shadow: Serving, canary_of: Callable[[], Canary]) -> Serving:
        """Replace the challenger's dead servers."""


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
        self.shadow: Serving | None = None  # the challenger's servers
        self._shadow_canary: Canary | None = None
        self._shadow_skip: str | None = None

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
        self.poll_shadow()

    def poll_shadow(self) -> None:
        """Serve what CHALLENGER_URI resolves to in shadow; stop the shadow when it resolves to
        another version or none; replace dead shadow servers. A registry that cannot be read
        leaves the shadow as it is."""
        try:
            wanted = self._shadow_target()
        except UserError as error:
            logger.warning("%s; the challenger in shadow is left as it is", error)
            wanted = self.shadow.info if self.shadow else None
        version = wanted["version"] if wanted else None
        if self.shadow is not None and self.shadow.version != version:
            now = f"version {version}" if version else "no version but the served one"
            self._stop_shadow(f"{self.settings.challenger_uri} resolves to {now}")
        if version != self._shadow_skip:
            self._shadow_skip = None
        if wanted is not None and self.shadow is None and version != self._shadow_skip:
            self._start_shadow(wanted)
            self.keep_served_copy_only()
        if self.shadow is not None:
            self.shadow = self.executor.heal_shadow(self.shadow, self._shadowed_canary)

    def _shadow_target(self) -> dict[str, Any] | None:
        """What CHALLENGER_URI resolves to now, unless that is the served version; None
        without a challenger or a served version."""
        if self.serving is None or self.settings.challenger_uri == NO_CHALLENGER:
            return None
        try:
            target = self.reader.resolve(self.settings.challenger_uri)
        except NotFound:
            return None
        return None if target["version"] == self.serving.version else target

    def _start_shadow(self, target: dict[str, Any]) -> None:
        version, uri = target["version"], self.settings.challenger_uri
        logger.info("%s resolves to version %s: checking it for the shadow", uri, version)
        try:
            checked = in_child(check_version, target, self.settings)
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            info = {**target, "served_since": now}
            self.shadow = self.executor.serve_shadow(
                checked.canary, info, self._target_check(version, uri)
            )
        except Abandoned as change:
            logger.warning("challenger version %s abandoned: %s", version, change)
            return
        except (UserError, ServerError) as error:
            self._shadow_skip = version
            logger.error("challenger version %s not served in shadow: %s", version, error)
            return
        self._shadow_canary = checked.canary
        logger.info("challenger version %s in shadow", version)

    def _stop_shadow(self, reason: str) -> None:
        assert self.shadow is not None
        logger.info("challenger version %s leaves the shadow: %s", self.shadow.version, reason)
        self.executor.stop_shadow(self.shadow)
        self.shadow, self._shadow_canary = None, None
        self.keep_served_copy_only()

    def _shadowed_canary(self) -> Canary:
        """The challenger's canary, from its local copy once after a restart."""
        if self._shadow_canary is None:
            assert self.shadow is not None
            self._shadow_canary = in_child(check_version, self.shadow.info, self.settings).canary
        return self._shadow_canary

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
                checked.canary, info, old, self._target_check(version, self.settings.model_uri)
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
        """The local copies of versions refused, abandoned or replaced go (the challenger's
        stays while it is in shadow)."""
        kept = [s for s in (self.serving, self.shadow) if s is not None]
        prune_copies(self.settings, keep=[copy_path(s.info, self.settings) for s in kept])

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

    def _target_check(self, version: str, uri: str) -> Callable[[], None]:
        """Raises Abandoned when `uri` (MODEL_URI, CHALLENGER_URI) resolves to another version
        than `version` now, or to none (the latest intent wins); a registry that cannot be read
        lets the rollout go on."""

        def check() -> None:
            try:
                now = self.reader.resolve(uri)["version"]
            except NotFound as error:
                raise Abandoned(str(error)) from None
            except UserError as error:
                logger.warning("%s; rolling version %s out all the same", error, version)
                return
            if now != version:
                raise Abandoned(f"{uri} resolves to version {now} now")

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
        self._unlisted_path = settings.state_dir / UNLISTED_FILE
        self._served: Serving | None = None  # what the served-model file says, published last
        self._shadow: Serving | None = None

    def adopt(self) -> Serving | None:
        """The servers the served-model file lists that live and answer /ping; those an
        earlier controller was starting or draining when it died are stopped."""
        data = _read(self.settings.model_info_path)
        listed = set(_pids(data).values()) | set(_pids(data.get(SHADOW) or {}).values())
        orphans = _model_servers(_pids(_read(self._unlisted_path)))
        servers.stop([s for s in orphans if s.pid not in listed])
        self._unlisted(())
        self._served = _adopted(data, "model server(s)")
        return self._served

    def adopt_shadow(self) -> Serving | None:
        """The challenger's servers the served-model file lists that live and answer /ping."""
        entry = _read(self.settings.model_info_path).get(SHADOW) or {}
        self._shadow = _adopted(entry, "shadow server(s)")
        return self._shadow

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
            self._unlisted(old.servers)
            answered = switch_at + self.settings.gateway_read_timeout_seconds
            time.sleep(max(0.0, answered - time.time()))
            servers.stop(old.servers)
            self._unlisted(())
        return serving

    def serve_shadow(
        self, checked: Canary, info: dict[str, Any], check_target: Callable[[], None]
    ) -> Serving:
        path = self._copy(info)
        count = self.settings.shadow_servers
        started = self._start_checked(checked, path, count, check_target, SHADOW_NICENESS)
        shadow = self._publish_shadow(Serving(info, started))
        urls = ", ".join(s.url for s in started)
        logger.info("challenger version %s shadows on %s", shadow.version, urls)
        return shadow

    def stop_shadow(self, shadow: Serving) -> None:
        """Unpublished first: a gateway worker sends it nothing more within a second; a copy
        under way when it stops fails, and is counted as failed."""
        self._shadow = None
        self._write()
        self._unlisted(shadow.servers)
        time.sleep(MODEL_INFO_CHECK_SECONDS + DRAIN_MARGIN_SECONDS)
        servers.stop(shadow.servers)
        self._unlisted(())

    def _start_checked(
        self,
        checked: Canary,
        model_path: Path,
        count: int,
        check_target: Callable[[], None] = no_check,
        niceness: int = 0,
    ) -> tuple[Server, ...]:
        """`count` servers on the local copy `model_path`, each answering /ping and pricing the
        `checked` canary, `check_target` passed before, during and after; none left running on
        failure."""
        started: list[Server] = []
        try:
            check_target()
            for _ in range(count):
                started.append(
                    servers.start(self.settings, model_path, self.host, self.public_host, niceness)
                )
                self._unlisted(started)
            servers.wait_ready(started, self.settings.model_start_timeout_seconds, check_target)
            for server in started:
                servers.check_canary(server, checked)
            check_target()  # the last look before the gateway sees them
        except BaseException:
            servers.stop(started)
            raise
        finally:
            self._unlisted(())
        return tuple(started)

    def _unlisted(self, running: Sequence[Server]) -> None:
        """Record the servers running unlisted (starting, or draining): a controller that dies
        then leaves them to the next one, or to `--stop`, to stop."""
        if running:
            pids = {s.url: s.pid for s in running}
            self._unlisted_path.write_text(json.dumps({"pids": pids}))
        else:
            self._unlisted_path.unlink(missing_ok=True)

    def heal(self, serving: Serving, canary_of: Callable[[], Canary]) -> Serving:
        """Replace dead servers (and top the pool up to MODEL_SERVERS)."""
        return self._heal(serving, canary_of, self.settings.model_servers, self._publish)

    def heal_shadow(self, shadow: Serving, canary_of: Callable[[], Canary]) -> Serving:
        """Replace the challenger's dead servers (and top them up to SHADOW_SERVERS)."""
        count = self.settings.shadow_servers
        return self._heal(shadow, canary_of, count, self._publish_shadow, SHADOW_NICENESS)

    def _heal(
        self,
        serving: Serving,
        canary_of: Callable[[], Canary],
        count: int,
        publish: Callable[[Serving], Serving],
        niceness: int = 0,
    ) -> Serving:
        live = tuple(s for s in serving.servers if servers.alive(s.pid))
        missing = count - len(live)
        if len(live) < len(serving.servers):
            dead = ", ".join(s.url for s in serving.servers if s not in live)
            logger.warning("model server(s) of version %s died: %s", serving.version, dead)
            serving = publish(dataclasses.replace(serving, servers=live))
        if missing > 0:
            try:
                path = self._copy(serving.info)
                live += self._start_checked(canary_of(), path, missing, no_check, niceness)
            except (ServerError, UserError) as error:
                logger.error("could not replace model servers: %s", error)
            serving = publish(dataclasses.replace(serving, servers=live))
        return serving

    def _copy(self, info: dict[str, Any]) -> Path:
        """The version's local copy (made by its checks), downloaded again if it went."""
        if not has_copy(info, self.settings):
            in_child(ensure_copy, info, self.settings)
        return copy_path(info, self.settings)

    def _publish(self, serving: Serving) -> Serving:
        """Write the served-model file: the gateway's workers follow it."""
        self._served = serving
        self._write()
        return serving

    def _publish_shadow(self, shadow: Serving) -> Serving:
        """Write the served-model file with the challenger's servers as its `shadow` entry."""
        self._shadow = shadow
        self._write()
        return shadow

    def _write(self) -> None:
        if self._served is None:  # nothing served, nothing to shadow
            return
        info = _listed(self._served)
        if self._shadow is not None:
            info[SHADOW] = _listed(self._shadow)
        write_info(info, self.settings.model_info_path)


def executor(settings: Settings, host: str, public_host: str) -> Executor:
    """The executor ROLLOUT_EXECUTOR names."""
    if settings.rollout_executor == "kubernetes":
        from serving.deployment import Deployment  # the `kubernetes` extra

        return Deployment.connect(settings)
    return Processes(settings, host, public_host or host)


def _listed(serving: Serving) -> dict[str, Any]:
    """The served-model file's fields of `serving`: its info, servers and their pids."""
    pids = {s.url: s.pid for s in serving.servers}
    return {**serving.info, "servers": list(pids), "pids": pids}


def _pids(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry's servers (url -> pid), as the served-model file lists them."""
    pids = entry.get("pids")
    return pids if isinstance(pids, dict) else {}


def _adopted(entry: dict[str, Any], what: str) -> Serving | None:
    """The servers of a served-model file's `entry` that live and answer /ping."""
    pids = _pids(entry)
    listed = [Server(url, int(pids[url])) for url in entry.get("servers") or () if url in pids]
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
    info = {k: v for k, v in entry.items() if k not in ("servers", "pids", SHADOW)}
    serving = Serving(info, live)
    which = ", ".join(f"{s.url} (pid {s.pid})" for s in live)
    logger.info("adopted %d %s of version %s: %s", len(live), what, serving.version, which)
    return serving


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
    controller.shadow = controller.executor.adopt_shadow()
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
    help="Stop the servers the served-model file lists (and those starting or draining), then "
    "exit.",
)
def main(host: str, public_host: str, stop_servers: bool) -> None:
    """Keep a pool of model servers on MODEL_URI, rolling out every change it sees."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
        if stop_servers:
            data = _read(settings.model_info_path)
            unlisted = _pids(_read(settings.state_dir / UNLISTED_FILE))
            listed = _pids(data) | _pids(data.get(SHADOW) or {}) | unlisted
            servers.stop(_model_servers(listed))
            settings.model_info_path.unlink(missing_ok=True)  # nothing is served any more
            (settings.state_dir / UNLISTED_FILE).unlink(missing_ok=True)
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
