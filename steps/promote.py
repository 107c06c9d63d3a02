"""Promote: point the champion alias at a model version, if the evaluation gate lets it.

Reads:  the version's evaluation tags (verdict, test_mae, champion_test_mae).
Writes: alias `champion` -> the version (the former champion keeps alias `previous-champion`),
        stage `Production` mirrored for teams that promote by stage, tag `promoted_at`.
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
    tags = registry.lookup(registry.model_uri(settings.model_name, version)).tags
    allowed, reason = gate(tags, force)
    return champion_to(version, reason, settings) if allowed else Promotion(version, False, reason)


def run_promote(version: str, force: bool, settings: Settings) -> Promotion:
    version = version or registry.latest_version(settings.model_name)
    with step_run("promote"):
        result = promote(settings, version, force)
        promoted = str(result.promoted).lower()
        mlflow.set_tags({"model_version": version, "promoted": promoted, "reason": result.reason})
        return result


def describe(result: Promotion, settings: Settings) -> str:
    if not result.promoted:
        return f"version {result.version} NOT promoted ({result.reason}); champion unchanged"
    was = f", was version {result.previous}" if result.previous else ""
    return (
        f"{settings.model_name}@{settings.model_alias} -> version {result.version} "
        f"({result.reason}{was}); the rollout controller serves it after its checks"
    )


@click.command()
@click.option("--model-version", default="", help="Version to promote (default: the newest).")
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
