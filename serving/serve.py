"""Serve the model named by MODEL_URI with MLflow's scoring server, pinned to one version.

An alias or stage is resolved once, here; the version is downloaded once to STATE_DIR/models;
what is served is written to MODEL_INFO_PATH for the gateway. This server does not follow
promotions: the rollout controller (`serving.controller`) does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import click
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

from config.errors import UserError
from config.settings import Settings
from steps.registry import check_requirements, load_reference, resolve

logger = logging.getLogger(__name__)

MODELS_DIR = "models"  # under STATE_DIR: the local copy of each version served here


def training_reference(model_uri: str) -> dict | None:
    """The binned training distribution of each feature (for drift), if the model has one."""
    try:
        return load_reference(model_uri)
    except UserError as error:
        logger.warning("%s: drift will not be measured", error)
        return None


def write_info(info: dict, path: Path) -> None:
    """Write atomically, so a reader never sees half a file; `served_since` is now unless
    `info` has one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    served = {"served_since": now, **info}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(served, indent=2))
    partial.replace(path)


def copy_path(info: dict, settings: Settings) -> Path:
    return settings.state_dir / MODELS_DIR / f"{info['name']}-{info['version']}"


def local_copy(info: dict, settings: Settings) -> Path:
    """The version's files under STATE_DIR/models/<name>-<version>, downloaded once: every
    server of the version loads them from there (`mlflow models serve`'s launcher downloads a
    copy of its own for each server)."""
    target = copy_path(info, settings)
    if not (target / "MLmodel").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        download_artifacts(artifact_uri=info["uri"], dst_path=str(partial))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def prune_copies(settings: Settings, keep: Path | None) -> None:
    """Remove every local copy but `keep` (the served version's)."""
    for copy in (settings.state_dir / MODELS_DIR).glob("*"):
        if copy != keep:
            shutil.rmtree(copy, ignore_errors=True)


def serve_command(
    settings: Settings, model_path: Path, host: str, port: int, workers: int
) -> tuple[list[str], dict[str, str]]:
    """MLflow's scoring server on a local copy: the command and environment MLflow builds for
    the process `mlflow models serve` runs under its launcher, run without that launcher (a
    second Python of 250 MB that only downloads the model and waits)."""
    command, env = scoring_server.get_cmd(
        str(model_path),
        port=port,
        host=host,  # type: ignore[arg-type]  # typed int by MLflow, quoted as a string
        timeout=settings.model_timeout_seconds,
        nworkers=workers,
    )
    return [sys.executable, "-m", *shlex.split(command)], server_env(env)


def server_env(environ: dict[str, str]) -> dict[str, str]:
    """One OpenMP thread (one-row predictions pay for thread start-up on every tree; batches
    barely gain)."""
    return {"OMP_NUM_THREADS": "1", **environ}


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def main(host: str) -> None:
    """Resolve MODEL_URI, check this environment has the package versions the model was logged
    with, record it, then become MLflow's scoring server on a local copy of that version."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
        os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
        os.environ["MLFLOW_REGISTRY_URI"] = settings.mlflow_tracking_uri
        info = resolve(settings.model_uri)
        path = local_copy(info, settings)
        check_requirements(info["uri"], str(path))
    except (UserError, MlflowException) as error:
        raise click.ClickException(" ".join(str(error).split())) from None
    info["reference"] = training_reference(info["uri"])
    write_info(info, settings.model_info_path)
    port, workers = settings.model_port, settings.model_workers
    logger.info("serving %s (from %s) on %s:%d", info["uri"], settings.model_uri, host, port)
    prune_copies(settings, keep=path)  # an earlier version's, from before a restart
    command, env = serve_command(settings, path, host, port, workers)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
