"""Main: the whole chain, ingest -> train -> evaluate -> promote, as nested runs of one run.

Reads:  a data source (`--source`).
Writes: the runs of each step; a new model version, promoted if the gate lets it through. When
        CANDIDATE_MODEL_NAME is not MODEL_NAME, the chain stops before promote: releasing the
        version is the releaser's (steps/roles.py).
"""

import click
import mlflow

from config.settings import Settings
from steps.evaluate import run_evaluate
from steps.ingest import run_ingest, source_options
from steps.params import load_params
from steps.promote import describe, run_promote
from steps.tracking import cli_errors, configure, step_run
from steps.train import run_train


@click.command()
@source_options
@click.option("--preset", default="", help="Preset of params.yaml (default: its `preset`).")
@click.option(
    "--force-promote",
    type=bool,
    default=False,
    show_default=True,
    help="true to promote even if the evaluation gate refuses.",
)
@cli_errors
def main(source: str, train_name: str, test_name: str, preset: str, force_promote: bool) -> None:
    """Run every step; the new version becomes champion only if the gate lets it through."""
    settings, params = configure(), load_params()
    with step_run("main"):
        ingest_run_id = run_ingest(source, train_name, test_name, params)
        _, version = run_train(ingest_run_id, preset, source, params, settings)
        outcome = run_evaluate(version, ingest_run_id, params, settings)
        if settings.candidate_model_name == settings.model_name:
            promoted = describe(run_promote(version, force_promote, settings, params), settings)
        else:
            promoted = release_hint(version, settings)
        mlflow.set_tags({"model_version": version, "verdict": outcome})
    click.echo(f"version {version}: verdict {outcome}\n{promoted}")


def release_hint(version: str, settings: Settings) -> str:
    return (
        f"{settings.candidate_model_name} version {version} is a candidate; the releaser "
        f"promotes it into {settings.model_name}: mlflow run . -e promote --env-manager local "
        f"-P model_version={version}"
    )


if __name__ == "__main__":
    main()
