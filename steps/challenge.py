"""Challenge: make a version the challenger, which the rollout controller serves in shadow beside
the champion, so that it prices copies of live requests before it may replace it.

Reads:  the version of CANDIDATE_MODEL_NAME (default: the newest).
Writes: when the two names differ, a copy of that version in MODEL_NAME (as promote makes one);
        the alias CHALLENGER_URI names (default `challenger`) of MODEL_NAME -> the version.
        `--remove true` removes the alias instead (the controller stops the shadow).
No evaluation gate: the shadow is there to test the verdict on live requests. A version that
cannot be loaded or cannot price its input example is refused, and the champion cannot be its
own challenger. Promote removes the alias when it promotes the challenger.
"""

import click
import mlflow

from config.settings import NO_CHALLENGER, Settings
from steps import registry
from steps.promote import challenger_alias, check_loadable
from steps.tracking import StepError, cli_errors, configure, step_run


def alias_of(settings: Settings) -> str:
    """The alias of MODEL_NAME that CHALLENGER_URI names, or StepError."""
    alias = challenger_alias(settings)
    if alias is None:
        described = "no challenger" if settings.challenger_uri == NO_CHALLENGER else "no alias"
        raise StepError(
            f"CHALLENGER_URI is {settings.challenger_uri} ({described} of {settings.model_name}):"
            f" set it to models:/{settings.model_name}@challenger to serve a challenger"
        )
    return alias


def challenge(settings: Settings, version: str) -> str:
    """Version `version` of CANDIDATE_MODEL_NAME becomes the challenger if it loads; returns
    its version in MODEL_NAME."""
    alias, name = alias_of(settings), settings.model_name
    check_loadable(registry.model_uri(settings.candidate_model_name, version))
    served = registry.release(settings.candidate_model_name, version, name)
    if served == registry.alias_version(name, settings.model_alias):
        raise StepError(
            f"version {served} is the champion ({name}@{settings.model_alias}): it cannot be "
            "its own challenger"
        )
    registry.set_alias(name, alias, served)
    return served


def withdraw(settings: Settings) -> str | None:
    """Remove the challenger alias; the version it pointed at, if any."""
    alias, name = alias_of(settings), settings.model_name
    version = registry.alias_version(name, alias)
    if version is not None:
        registry.set_alias(name, alias, None)
    return version


@click.command()
@click.option(
    "--model-version",
    default="",
    help="Version of CANDIDATE_MODEL_NAME to serve in shadow (default: the newest).",
)
@click.option(
    "--remove",
    type=bool,
    default=False,
    show_default=True,
    help="true to remove the challenger alias instead (its shadow servers stop).",
)
@cli_errors
def main(model_version: str, remove: bool) -> None:
    """Make a version the challenger, priced in shadow beside the champion."""
    settings = configure()
    alias = f"{settings.model_name}@{alias_of(settings)}"
    with step_run("challenge"):
        if remove:
            gone = withdraw(settings)
            click.echo(f"{alias} removed (was version {gone})" if gone else f"no {alias}")
            return
        version = model_version or registry.latest_version(settings.candidate_model_name)
        served = challenge(settings, version)
        mlflow.set_tags({"model_version": served, "candidate_version": version})
    click.echo(
        f"{alias} -> version {served}; the rollout controller serves it in shadow: "
        "SHADOW_SHARE of the priced requests are copied to it, its answers never returned"
    )


if __name__ == "__main__":
    main()
