"""steps.selection: CV scores and size per configuration, one progress line each, the average of
the families' best scored exactly as a VotingRegressor refitted on each fold would be, and the
choice weighing size."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.ensemble import VotingRegressor
from sklearn.metrics import mean_absolute_error
from sklearn.model_selection import KFold, cross_val_predict

from pyfunc.schema import FEATURE_NAMES, TARGET
from steps import selection
from steps.params import Candidate, Params, Preset
from steps.tracking import StepError
from steps.train import candidates, fit

TWO_FAMILIES = Preset(
    "two",
    engineered_features=True,
    log_target=True,
    ensemble=True,
    candidates=(
        Candidate("RandomForestRegressor", {"n_estimators": [6], "min_samples_leaf": [1, 8]}),
        Candidate("HistGradientBoostingRegressor", {"max_iter": [20], "log_target": [True, False]}),
    ),
)
PROGRESS = re.compile(r"^(\w+) \{.*\}: CV MAE \d+ UF, (\d+) nodes \((\d+\.\d) MB\) \(\d+\.\d s\)$")


@pytest.fixture(scope="module")
def data(listings: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    rows = listings.head(600)
    return rows[list(FEATURE_NAMES)], rows[TARGET.name].to_numpy()


@pytest.fixture(scope="module")
def cv() -> KFold:
    return KFold(3, shuffle=True, random_state=1)


@pytest.fixture(scope="module")
def scored(
    data: tuple[pd.DataFrame, np.ndarray], cv: KFold, tiny_params: Params
) -> list[selection.Scored]:
    x, y = data
    return selection.select(candidates(TWO_FAMILIES, tiny_params), x, y, cv, ensemble=True)


def test_every_configuration_and_the_average_are_scored_best_first(
    scored: list[selection.Scored],
) -> None:
    names = sorted(s.name for s in scored)

    assert names == [
        "HistGradientBoostingRegressor_1",
        "HistGradientBoostingRegressor_2",
        "RandomForestRegressor_1",
        "RandomForestRegressor_2",
        "VotingRegressor",
    ]
    assert [s.mae for s in scored] == sorted(s.mae for s in scored)


def test_the_average_is_of_the_best_configuration_of_each_family(
    scored: list[selection.Scored],
) -> None:
    (voting,) = [s for s in scored if s.family == selection.ENSEMBLE]
    singles = [s for s in scored if s.family != selection.ENSEMBLE]
    best = {
        family: min((s for s in singles if s.family == family), key=lambda s: s.mae).name
        for family in ("RandomForestRegressor", "HistGradientBoostingRegressor")
    }

    assert voting.config == {"members": ", ".join(best.values())}
    assert [name for name, _ in voting.pipeline.named_steps["model"].estimators] == list(
        best.values()
    )


def test_the_average_scores_as_a_voting_regressor_cross_validated(
    scored: list[selection.Scored], data: tuple[pd.DataFrame, np.ndarray], cv: KFold
) -> None:
    x, y = data
    (voting,) = [s for s in scored if s.family == selection.ENSEMBLE]
    assert isinstance(voting.pipeline.named_steps["model"], VotingRegressor)

    refitted = cross_val_predict(voting.pipeline, x, y, cv=cv)

    np.testing.assert_allclose(voting.predictions, refitted, rtol=1e-9)
    folds = [test for _, test in cv.split(x)]
    maes = [mean_absolute_error(y[i], refitted[i]) for i in folds]
    assert voting.mae == pytest.approx(np.mean(maes), rel=1e-9)
    assert voting.metrics["std_test_mae"] == pytest.approx(np.std(maes), rel=1e-9)


def test_one_progress_line_per_candidate_with_its_cv_mae_and_seconds(
    data: tuple[pd.DataFrame, np.ndarray],
    cv: KFold,
    tiny_params: Params,
    caplog: pytest.LogCaptureFixture,
) -> None:
    x, y = data
    with caplog.at_level("INFO", logger=selection.__name__):
        scored = selection.select(candidates(TWO_FAMILIES, tiny_params), x, y, cv, ensemble=True)

    lines = [r.getMessage() for r in caplog.records if r.name == selection.__name__]
    assert len(lines) == len(scored) == 5
    for line in lines:
        assert PROGRESS.match(line), line
    by_name = {s.name: s for s in scored}
    for line in lines:
        name, nodes, mb = PROGRESS.match(line).groups()
        assert f"CV MAE {by_name[name].mae:.0f} UF" in line
        assert int(nodes) == by_name[name].nodes > 0
        assert mb == f"{by_name[name].size_mb:.1f}"


def test_no_average_without_ensemble_or_with_one_family(
    data: tuple[pd.DataFrame, np.ndarray], cv: KFold, tiny_params: Params
) -> None:
    x, y = data
    one_family = replace(TWO_FAMILIES, candidates=TWO_FAMILIES.candidates[:1])

    without = selection.select(candidates(TWO_FAMILIES, tiny_params), x, y, cv, ensemble=False)
    alone = selection.select(candidates(one_family, tiny_params), x, y, cv, ensemble=True)

    assert selection.ENSEMBLE not in {s.family for s in without + alone}


def test_fit_refits_the_best_candidate_and_keeps_its_folds(
    listings: pd.DataFrame, tiny_params: Params
) -> None:
    rows = listings.head(600)

    result = fit(rows, TWO_FAMILIES, tiny_params)

    best = result.cv_results.iloc[0]
    assert (
        result.cv_metrics["cv_mae"]
        == best["mean_test_mae"]
        == result.cv_results["mean_test_mae"].min()
    )
    assert result.best_params["estimator"] in best["candidate"]
    assert result.cv.get_n_splits() == tiny_params.cv_folds
    assert result.cv_predictions.shape == (len(rows),)
    folds = [test for _, test in result.cv.split(rows)]
    y = rows[TARGET.name].to_numpy()
    assert np.mean(
        [mean_absolute_error(y[i], result.cv_predictions[i]) for i in folds]
    ) == pytest.approx(result.cv_metrics["cv_mae"], rel=1e-9)
    assert type(result.pipeline.named_steps["model"]).__name__ in (
        result.best_params["estimator"],
        "TransformedTargetRegressor",
    )


def test_the_size_is_the_node_count_of_the_refit_estimated_from_the_folds(
    scored: list[selection.Scored], data: tuple[pd.DataFrame, np.ndarray]
) -> None:
    x, y = data
    by_name = {s.name: s for s in scored}
    forest = by_name["RandomForestRegressor_1"]  # full depth: grows with the rows

    refitted = selection.tree_nodes(clone(forest.pipeline).fit(x, y).named_steps["model"])

    assert forest.nodes == pytest.approx(refitted, rel=0.05)
    assert forest.size_mb == forest.nodes * selection.BYTES_PER_NODE / 2**20
    (voting,) = [s for s in scored if s.family == selection.ENSEMBLE]
    members = voting.config["members"].split(", ")
    assert voting.nodes == sum(by_name[name].nodes for name in members)


def test_by_default_the_choice_is_the_lowest_cv_mae(scored: list[selection.Scored]) -> None:
    assert selection.choose(scored) is min(scored, key=lambda s: s.mae) is scored[0]


def test_a_limit_below_the_best_falls_to_the_best_candidate_under_it(
    scored: list[selection.Scored], caplog: pytest.LogCaptureFixture
) -> None:
    best, smallest = scored[0], min(scored, key=lambda s: s.nodes)
    assert smallest.size_mb < best.size_mb
    limit = (smallest.size_mb + best.size_mb) / 2
    under = [s for s in scored if s.size_mb <= limit]

    with caplog.at_level("INFO", logger=selection.__name__):
        chosen = selection.choose(scored, max_mb=limit)

    assert chosen is min(under, key=lambda s: s.mae)
    assert chosen is not best
    lines = [r.getMessage() for r in caplog.records if r.name == selection.__name__]
    assert lines == [
        f"{s.name} not chosen: {s.size_mb:.1f} MB over selection.max_model_mb ({limit:g} MB)"
        for s in scored
        if s.size_mb > limit
    ]


def test_a_size_weight_trades_cv_mae_for_size(scored: list[selection.Scored]) -> None:
    smallest = min(scored, key=lambda s: s.nodes)

    assert selection.choose(scored, weight=0.0) is scored[0]
    assert selection.choose(scored, weight=1e6) is smallest
    weighed = selection.choose(scored, weight=0.05)
    assert weighed is min(scored, key=lambda s: s.mae * (1 + 0.05 * s.size_mb))


def test_no_candidate_under_the_limit_names_the_limit_and_the_smallest(
    scored: list[selection.Scored],
) -> None:
    smallest = min(scored, key=lambda s: s.nodes)
    limit = smallest.size_mb / 2

    with pytest.raises(StepError) as raised:
        selection.choose(scored, max_mb=limit)

    assert str(raised.value) == (
        f"no candidate fits selection.max_model_mb ({limit:g} MB): the smallest, "
        f"{smallest.name}, is {smallest.size_mb:.1f} MB ({smallest.nodes} nodes); raise the "
        "limit or search smaller forests (n_estimators, min_samples_leaf, max_depth)"
    )
