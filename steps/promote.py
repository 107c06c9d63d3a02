"""Promote: point the champion alias at a model version, if the evaluation gate lets it.

Reads:  the version's evaluation tags (verdict, test_mae, champion_test_mae).
Writes: alias `champion` -> the version (the former champion keeps alias `previous-champion`),
        stage `Production` mirrored for teams that promote by stage, tag `promoted_at`.
A version that cannot be loaded or cannot price its own input example is never promoted.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from dataclasses import dataclass

import click
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pyfunc.settings import Settings
from steps.evaluate import PASSING_VERDICTS, latest_version
from steps.tracking import StepError, cli_errors, configure, step_run

logger = logging.getLogger(__name__)

PREVIOUS_ALIAS = "previous-champion"
PRODUCTION_STAGE = "Production"


@dataclass(frozen=True)
class Promotion:
    version: str
    promoted: bool
    reason: str
    previous: str | None = None


def current_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def gate(tags: dict[str, str], force: bool) -> tuple[bool, str]:
    """Whether the evaluation tags let the version through, and why."""
    if force:
        return True, "forced"
    outcome = tags.get("verdict")
    if outcome is None:
        return False, "not evaluated: run the evaluate step first (or force)"
    if outcome not in PASSING_VERDICTS:
        return False, (f"verdict {outcome!r}: test MAE {tags.get('test_mae')} vs champion "
                       f"{tags.get('champion_test_mae')} on the same rows")
    return True, f"verdict {outcome!r}"


def check_loadable(uri: str) -> mlflow.pyfunc.PyFuncModel:
    """Load the model and price its input example (the model is returned), or raise StepError."""
    try:
        model = mlflow.pyfunc.load_model(uri)
        model.predict(model.input_example)
        return model
    except Exception as error:
        raise StepError(f"{uri} cannot be loaded or cannot price its input example "
                        f"({type(error).__name__}: {error}); the champion is unchanged") from None


def move_champion(client: MlflowClient, settings: Settings, version: str) -> str | None:
    """Alias champion -> version, previous-champion -> the former one; mirror the stage."""
    previous = current_version(client, settings.model_name, settings.model_alias)
    if previous and previous != version:
        client.set_registered_model_alias(settings.model_name, PREVIOUS_ALIAS, previous)
    client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated, still used
        client.transition_model_version_stage(settings.model_name, version, PRODUCTION_STAGE,
                                              archive_existing_versions=True)
    client.set_model_version_tag(settings.model_name, version, "promoted_at",
                                 dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    return previous if previous != version else None


def promote(client: MlflowClient, settings: Settings, version: str, force: bool) -> Promotion:
    try:
        model_version = client.get_model_version(settings.model_name, version)
    except MlflowException:
        raise StepError(f"model {settings.model_name!r} has no version {version!r}") from None
    allowed, reason = gate(model_version.tags, force)
    if not allowed:
        return Promotion(version, False, reason)
    check_loadable(f"models:/{settings.model_name}/{version}")
    return Promotion(version, True, reason, move_champion(client, settings, version))


def run_promote(version: str, force: bool, settings: Settings) -> Promotion:
    client = MlflowClient()
    version = version or latest_version(client, settings.model_name)
    with step_run("promote"):
        result = promote(client, settings, version, force)
        mlflow.set_tags({"model_version": version, "promoted": str(result.promoted).lower(),
                         "reason": result.reason})
        return result


def describe(result: Promotion, settings: Settings) -> str:
    if not result.promoted:
        return f"version {result.version} NOT promoted ({result.reason}); champion unchanged"
    was = f", was version {result.previous}" if result.previous else ""
    return (f"{settings.model_name}@{settings.model_alias} -> version {result.version} "
            f"({result.reason}{was}); the rollout controller serves it after its checks")


@click.command()
@click.option("--model-version", default="", help="Version to promote (default: the newest).")
@click.option("--force", type=bool, default=False, show_default=True,
              help="true to promote even if the evaluation gate refuses.")
@cli_errors
def main(model_version: str, force: bool) -> None:
    """Move the champion alias to a version that passed evaluation."""
    settings = Settings.from_env()
    configure(settings)
    click.echo(describe(run_promote(model_version, force, settings), settings))


if __name__ == "__main__":
    main()
