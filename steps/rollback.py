"""Rollback: make the previous champion the champion again, in one command.

Reads:  alias `previous-champion` of the registered model.
Writes: alias `champion` -> that version, `previous-champion` -> the one rolled back from.
"""

import click

from config.settings import Settings
from steps.promote import Promotion, champion_to, describe
from steps.registry import PREVIOUS_ALIAS, alias_version
from steps.tracking import StepError, cli_errors, configure, step_run


def rollback(settings: Settings) -> Promotion:
    previous = alias_version(settings.model_name, PREVIOUS_ALIAS)
    if previous is None:
        raise StepError(f"model {settings.model_name!r} has no {PREVIOUS_ALIAS!r} to roll back to")
    return champion_to(previous, "rollback", settings)


@click.command()
@cli_errors
def main() -> None:
    """Point the champion alias back at the previous champion."""
    settings = configure()
    with step_run("rollback"):
        result = rollback(settings)
    click.echo(describe(result, settings))


if __name__ == "__main__":
    main()
