"""Serve the model named by MODEL_URI with one `mlflow models serve`, pinned to one version.

An alias or stage is resolved once, here; what is served is written to MODEL_INFO_PATH for the
gateway. This server does not follow promotions: the rollout controller (`serving.controller`) does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

import click

from config.errors import UserError
from config.settings import Settings
from steps.registry import check_requirements, load_reference, resolve

logger = logging.getLogger(__name__)


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


def serve_command(settings: Settings, uri: str, host: str, port: int, workers: int) -> list[str]:
    options = ["--env-manager", "local", "-h", host, "-p", str(port), "--workers", str(workers)]
    timeout = ["--timeout", str(settings.model_timeout_seconds)]
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, *options, *timeout]


def server_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment `mlflow models serve` needs: one OpenMP thread (one-row predictions pay
    for thread start-up on every tree; batches barely gain), this venv's `uvicorn` on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"
    return {"OMP_NUM_THREADS": "1", **environ, "PATH": path}


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def main(host: str) -> None:
    """Resolve MODEL_URI, check this environment has the package versions the model was logged
    with, record it, then become `mlflow models serve` on that version."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
        os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
        os.environ["MLFLOW_REGISTRY_URI"] = settings.mlflow_tracking_uri
        info = resolve(settings.model_uri)
        check_requirements(info["uri"])
    except UserError as error:
        raise click.ClickException(str(error)) from None
    info["reference"] = training_reference(info["uri"])
    write_info(info, settings.model_info_path)
    port, workers = settings.model_port, settings.model_workers
    logger.info("serving %s (from %s) on %s:%d", info["uri"], settings.model_uri, host, port)
    command = serve_command(settings, info["uri"], host, port, workers)
    os.execvpe(command[0], command, server_env(dict(os.environ)))


if __name__ == "__main__":
    main()
