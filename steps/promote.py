"""Promote: point the champion alias at a model version, if the evaluation gate lets it.

Reads:  the version of CANDIDATE_MODEL_NAME (default MODEL_NAME) and its evaluation tags
        (verdict, test_mae, champion_test_mae); when params.yaml's `promotion.shadow` asks for
        it, how many requests the version priced in shadow as the challenger, and how many
        realized prices those rows have (the prediction store, PREDICTION_STORE_URL).
Writes: when the two names differ, a copy of that version in MODEL_NAME (tags, run and files:
        MlflowClient.copy_model_version); alias `champion` of MODEL_NAME -> the version (the
        former champion keeps alias `previous-champion`), stage `Production` mirrored for teams
        that promote by stage, tag `promoted_at`; the challenger alias goes if it named the
        version.
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
from steps.params import Params, ShadowGate, load_params
from steps.prediction_store import connect, shadow_evidence, store_errors
from steps.registry_reader import Reference
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


def promote(
    settings: Settings, version: str, force: bool, params: Params | None = None
) -> Promotion:
    """Candidate `version` becomes the champion if the gate lets it through (the evaluation,
    and the shadow when params.yaml asks for it) and it loads."""
    candidate = settings.candidate_model_name
    uri = registry.model_uri(candidate, version)
    allowed, reason = gate(registry.lookup(uri).tags, force)
    if not allowed:
        return Promotion(version, False, reason)
    check_loadable(uri)
    # a copy made here for a version never shadowed is the one a challenge would make
    served = registry.release(candidate, version, settings.model_name)
    shadow = (params or load_params()).shadow_gate
    if not force and (short := shadow_shortfall(shadow, served, settings)):
        return Promotion(version, False, short)
    previous = registry.move_champion(settings.model_name, settings.model_alias, served)
    retire_challenger(settings, served)
    return Promotion(served, True, reason, previous, version if served != version else None)


def shadow_shortfall(gate: ShadowGate, version: str, settings: Settings) -> str | None:
    """Why version `version` of MODEL_NAME has not been in shadow enough for `gate`, or None."""
    if not (gate.min_requests or gate.min_outcomes):
        return None
    engine = connect(settings.prediction_store_url)
    try:
        with store_errors():
            requests, outcomes = shadow_evidence(engine, version)
    finally:
        engine.dispose()
    if requests >= gate.min_requests and outcomes >= gate.min_outcomes:
        return None
    return (
        f"version {version} priced {requests} requests in shadow, with {outcomes} realized "
        f"prices; params.yaml promotion.shadow requires {gate.min_requests} and "
        f"{gate.min_outcomes}: make it the challenger (mlflow run . -e challenge "
        f"--env-manager local -P model_version={version}) and promote it once it has them"
    )


def challenger_alias(settings: Settings) -> str | None:
    """The alias of MODEL_NAME that CHALLENGER_URI names, if it names one."""
    reference = Reference.parse(settings.challenger_uri)
    if reference is None or reference.name != settings.model_name:
        return None
    return reference.alias


def retire_challenger(settings: Settings, version: str) -> None:
    """The challenger alias goes once its version is the champion: else the controller would
    shadow it again after the next promotion."""
    alias = challenger_alias(settings)
    if alias and registry.alias_version(settings.model_name, alias) == version:
        registry.set_alias(settings.model_name, alias, None)


def run_promote(
    version: str, force: bool, settings: Settings, params: Params | None = None
) -> Promotion:
    version = version or registry.latest_version(settings.candidate_model_name)
    with step_run("promote"):
        result = promote(settings, version, force, params)
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
