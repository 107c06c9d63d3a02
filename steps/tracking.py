"""What every step shares: MLflow set-up, step runs, run artifacts, clean CLI failures."""

import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from config.errors import UserError
from config.settings import Settings, SettingsError

logger = logging.getLogger(__name__)


class StepError(UserError):
    """A step cannot go on; the message says why and what to do."""


def configure(settings: Settings | None = None) -> Settings:
    """Point MLflow at the tracking store and experiment of `settings` (default: read from the
    environment), and return them.

    Under `mlflow run` the run already exists (MLFLOW_RUN_ID): its experiment is kept.
    """
    settings = settings or Settings.from_env()
    export_credentials(settings)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(settings.mlflow_experiment_name)
    return settings


def export_credentials(settings: Settings) -> None:
    """MLflow's client reads its login from the environment alone: one given in ./.env too."""
    for name in ("mlflow_tracking_username", "mlflow_tracking_password"):
        if getattr(settings, name):
            os.environ.setdefault(name.upper(), getattr(settings, name))


@contextlib.contextmanager
def step_run(step: str) -> Iterator[mlflow.ActiveRun]:
    """A run for `step`, nested under the active run (`main`); under `mlflow run` it is the
    project's run, whose params are fixed as given: log resolved values as tags."""
    with mlflow.start_run(run_name=step, nested=mlflow.active_run() is not None) as run:
        mlflow.set_tag("step", step)
        yield run


def log_frame(frame: pd.DataFrame, artifact_path: str) -> None:
    folder, name = os.path.split(artifact_path)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=folder or None)


def load_frame(run_id: str, artifact_path: str) -> pd.DataFrame:
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path)
    except (MlflowException, OSError) as error:
        raise StepError(f"cannot read {artifact_path} of run {run_id}: {error}") from None
    return pd.read_parquet(local)


def cli_errors(command: Callable) -> Callable:
    """Turn expected failures into a one-line error and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (UserError, SettingsError) as error:
            raise click.ClickException(str(error)) from None
        except MlflowException as error:
            raise click.ClickException(f"MLflow: {error.message}") from None

    return wrapper
