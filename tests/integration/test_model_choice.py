"""The default preset's model choice generalizes: on two generated worlds, the candidate chosen
by K-fold CV on the train split has a test MAE within 1% of the best single candidate's."""

from __future__ import annotations

import pytest

from steps.params import Params, load_params
from tests.support.model_choice import compare

TOLERANCE = 0.01


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["realistic", "noisy"])
def test_the_chosen_model_is_within_one_percent_of_the_best_single_candidate(
    variant: str, params: Params
) -> None:
    comparison = compare(variant, params, baselines=False)  # client-sized rows

    best = comparison.best_single()
    chosen, reference = comparison.test_mae[comparison.chosen], comparison.test_mae[best]
    assert chosen <= (1 + TOLERANCE) * reference, (
        f"{variant}: chosen {comparison.chosen} test MAE {chosen:.0f}, "
        f"best single {best} {reference:.0f}"
    )
    assert set(comparison.test_mae) == set(comparison.cv_mae)
