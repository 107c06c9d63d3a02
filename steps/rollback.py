"""Rollback: make the previous champion the champion again, in one command.

Reads:  alias `previous-champion` of the registered model.
Writes: alias `champion` -> that version, `previous-champion` -> the one rolled back from.
"""

from __future__ import annotations

import click
from mlflow import MlflowClient

from pyfunc.settings import Settings
from steps.promote import (
    PREVIOUS_ALIAS,
    Promotion,
    check_loadable,
    current_version,
    describe,
    move_champion,
)
from steps.tracking import StepError, cli_errors, configure, step_run


def rollback(client: MlflowClient, settings: Settings) -> Promotion:
    previous = current_version(client, settings.model_name, PREVIOUS_ALIAS)
    if previous is None:
        raise StepError(f"model {settings.model_name!r} has no {PREVIOUS_ALIAS!r} to roll back to")
    check_loadable(f"models:/{settings.model_name}/{previous}")
    return Promotion(previous, True, "rollback", move_champion(client, settings, previous))


@click.command()
@cli_errors
def main() -> None:
    """Point the champion alias back at the previous champion."""
    settings = Settings.from_env()
    configure(settings)
    with step_run("rollback"):
        result = rollback(MlflowClient(), settings)
    click.echo(describe(result, settings))


if __name__ == "__main__":
    main()
