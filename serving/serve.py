"""Serve the model named by MODEL_URI with MLflow's scoring server, pinned to one version.

An alias or stage is resolved once, here; the version is downloaded once to STATE_DIR/models;
what is served is written to MODEL_INFO_PATH for the gateway. This server does not follow
promotions: the rollout controller (`serving.controller`) does.
"""

from __future__ import annotations

import logging
import os

import click
from mlflow.exceptions import MlflowException

from config.errors import UserError
from config.settings import Settings
from serving.checks import local_copy, training_reference
from serving.files import prune_copies, write_info
from serving.servers import serve_command
from steps.registry import check_requirements, resolve

logger = logging.getLogger(__name__)


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
    prune_copies(settings, keep=[path])  # an earlier version's, from before a restart
    command, env = serve_command(settings, path, host, port, workers)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main()
