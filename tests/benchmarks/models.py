"""The table variant x candidate (test MAE, UF) of the default preset's model selection.

For each generated world: every configuration the selection scores by K-fold CV, the average of
the families' best, the untuned 300-tree forest on the same features and the notebook preset,
each refitted on the whole train split and scored on the test split; the chosen one is marked.
"""

from __future__ import annotations

import logging

import click
import pandas as pd

from steps.generate import VARIANTS
from steps.params import load_params
from tests.support.model_choice import Comparison, compare


def table(comparisons: list[Comparison]) -> str:
    """Markdown: candidates as rows, worlds as columns; the chosen candidate marked with `*`."""
    columns = {
        c.variant: {
            name: f"{mae:,.0f}" + (" *" if name == c.chosen else "")
            for name, mae in c.test_mae.items()
        }
        for c in comparisons
    }
    frame = pd.DataFrame(columns).fillna("")
    lines = [["candidate", *frame.columns], ["---"] * (len(frame.columns) + 1)]
    lines += [[str(name), *row] for name, row in zip(frame.index, frame.to_numpy(), strict=True)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


@click.command()
@click.option(
    "--variant",
    "variants",
    multiple=True,
    type=click.Choice(list(VARIANTS)),
    default=("realistic", "noisy"),
    show_default=True,
    help="Generated world (repeat for several).",
)
@click.option("--train-rows", type=click.IntRange(100), default=16_212, show_default=True)
@click.option("--test-rows", type=click.IntRange(100), default=6_949, show_default=True)
def main(variants: tuple[str, ...], train_rows: int, test_rows: int) -> None:
    """Print the test MAE of every candidate (and baseline) on each world, as Markdown."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = load_params()
    comparisons = [compare(v, params, train_rows, test_rows) for v in variants]
    click.echo(table(comparisons))
    click.echo("* chosen by CV MAE on the train split")


if __name__ == "__main__":
    main()
