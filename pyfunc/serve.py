"""Serve the model named by MODEL_URI with `mlflow models serve`, pinned to one version.

An alias or stage (`models:/property-friends@champion`, `.../Production`) is resolved once, here,
to a version number; the server is started on exactly that version, and what it serves is
written to MODEL_INFO_PATH for the gateway (`GET /model`, `X-Model-Version`). Promoting another
version takes effect at the next start.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

import click

from pyfunc.errors import UserError
from pyfunc.profile import load_reference
from pyfunc.registry import resolve
from pyfunc.settings import Settings

logger = logging.getLogger(__name__)


def training_reference(model_uri: str) -> dict | None:
    """The binned training distribution of each feature (for drift), if the model has one."""
    try:
        return load_reference(model_uri)
    except UserError as error:
        logger.warning("%s: drift will not be measured", error)
        return None


def write_info(info: dict, path: Path) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    served = {**info, "served_since": now}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(served, indent=2))
    partial.replace(path)


def serve_command(settings: Settings, uri: str, host: str) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
        "-h", host, "-p", str(settings.model_port), "--workers", str(settings.model_workers),
        "--timeout", str(settings.model_timeout_seconds),
    ]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def main(host: str) -> None:
    """Resolve MODEL_URI, record it, then become `mlflow models serve` on that version."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
        os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
        os.environ["MLFLOW_REGISTRY_URI"] = settings.mlflow_tracking_uri
        info = resolve(settings.model_uri)
    except UserError as error:
        raise click.ClickException(str(error)) from None
    info["reference"] = training_reference(info["uri"])
    write_info(info, settings.model_info_path)
    logger.info("serving %s (from %s) on %s:%d", info["uri"], settings.model_uri, host,
                settings.model_port)
    # One-row predictions pay for OpenMP thread start-up on every tree; batches barely gain.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    bin_dir = str(Path(sys.executable).parent)  # the server runs `uvicorn` from PATH
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    command = serve_command(settings, info["uri"], host)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
