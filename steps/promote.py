"""Promote: point the champion alias at a model version, if the evaluation gate lets it.

Reads:  the version of CANDIDATE_MODEL_NAME (default MODEL_NAME) and its evaluation tags
        (verdict, test_mae, champion_test_mae).
Writes: when the two names differ, a copy of that version in MODEL_NAME (tags, run and files:
        MlflowClient.copy_model_version); alias `champion` of MODEL_NAME -> the version (the
        former champion keeps alias `previous-champion`), stage `Production` mirrored for teams
        that promote by stage, tag `promoted_at`.
A version that cannot be loaded or cannot price its own input example is never promoted.
"""

import logging
from dataclasses import dataclass

import click
import mlflow
from mlflow.pyfunc import PyFuncModel

from config.errors import UserError
from config.settings import Settings
from steps import registry
from steps.gate import gate
from steps.tracking import StepError, cli_errors, configure, step_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    version: str
    promoted: bool
    reason: str
    previous: str | None = None
    candidate: str | None = None  # the candidate version copied, when it is another model's


def check_loadable(uri: str, local_copy: str | None = None) -> PyFuncModel:
    """Check the model's logged package versions are the ones installed, load the model (from
    `local_copy` of it, if given) and price its input example (the model is returned);
    UserError or StepError otherwise."""
    try:
        registry.check_requirements(uri, local_copy)
        model = mlflow.pyfunc.load_model(local_copy or uri)
        model.predict(model.input_example)
        return model
    except UserError:
        raise
    except Exception as error:
        raise StepError(
            f"{uri} cannot be loaded or cannot price its input example "
            f"({type(error).__name__}: {' '.join(str(error).split())}); the champion is unchanged"
        ) from None


def champion_to(version: str, reason: str, settings: Settings) -> Promotion:
    """Move the champion alias to `version` if it loads and prices its input example."""
    check_loadable(registry.model_uri(settings.model_name, version))
    previous = registry.move_champion(settings.model_name, settings.model_alias, version)
    return Promotion(version, True, reason, previous)


def promote(settings: Settings, version: str, force: bool) -> Promotion:
    """Candidate `version` becomes the champion if the gate lets it through and it loads."""
    candidate = settings.candidate_model_name
    uri = registry.model_uri(candidate, version)
    allowed, reason = gate(registry.lookup(uri).tags, force)
    if not allowed:
        return Promotion(version, False, reason)
    check_loadable(uri)
    served = registry.release(candidate, version, settings.model_name)
    previous = registry.move_champion(settings.model_name, settings.model_alias, served)
    return Promotion(served, True, reason, previous, version if served != version else None)


def run_promote(version: str, force: bool, settings: Settings) -> Promotion:
    version = version or registry.latest_version(settings.candidate_model_name)
    with step_run("promote"):
        result = promote(settings, version, force)
        promoted = str(result.promoted).lower()
        mlflow.set_tags(
            {"model_version": result.version, "promoted": promoted, "reason": result.reason}
            | {"candidate_version": version}
        )
        return result


def describe(result: Promotion, settings: Settings) -> str:
    if not result.promoted:
        return f"version {result.version} NOT promoted ({result.reason}); champion unchanged"
    was = f", was version {result.previous}" if result.previous else ""
    copied = (
        f", a copy of {settings.candidate_model_name} version {result.candidate}"
        if result.candidate
        else ""
    )
    return (
        f"{settings.model_name}@{settings.model_alias} -> version {result.version} "
        f"({result.reason}{was}{copied}); the rollout controller serves it after its checks"
    )


@click.command()
@click.option(
    "--model-version",
    default="",
    help="Version of CANDIDATE_MODEL_NAME to promote (default: the newest).",
)
@click.option(
    "--force",
    type=bool,
    default=False,
    show_default=True,
    help="true to promote even if the evaluation gate refuses.",
)
@cli_errors
def main(model_version: str, force: bool) -> None:
    """Move the champion alias to a version that passed evaluation."""
    settings = configure()
    click.echo(describe(run_promote(model_version, force, settings), settings))


if __name__ == "__main__":
    main()
