"""steps.train: the notebook's flaws stay fixed (leakage, dropped numeric features, no seed, no CV).

MAPE's argument order and the price 0 row are tested in test_evaluate.py, the unknown sector in
test_model.py.
"""

from __future__ import annotations

import ast
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from category_encoders import TargetEncoder
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.pipeline import Pipeline

from pyfunc.features import ENGINEERED_FEATURES
from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, NUMERIC_NAMES, TARGET
from steps.params import Candidate, Params, Preset, Selection
from steps.selection import METRICS
from steps.train import TrainResult, build_pipeline, candidates, fit, regressor

FOREST = Candidate("RandomForestRegressor", {"n_estimators": [8], "min_samples_leaf": [1, 4, 16]})
PLAIN = Preset("plain", engineered_features=False, log_target=False, candidates=(FOREST,))
LOGGED = Preset("logged", engineered_features=True, log_target=True, candidates=(FOREST,))
CV_COLUMNS = [
    "candidate",
    "params",
    *[f"mean_test_{m}" for m in METRICS],
    *[f"std_test_{m}" for m in METRICS],
    "size_nodes",
    "size_mb",
    "chosen",
    "seconds",
]


def features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(FEATURE_NAMES)]


@pytest.fixture(scope="module")
def plain(listings: pd.DataFrame, tiny_params: Params) -> TrainResult:
    return fit(listings, PLAIN, tiny_params)


@pytest.fixture(scope="module")
def logged(listings: pd.DataFrame, tiny_params: Params) -> TrainResult:
    return fit(listings, LOGGED, tiny_params)


def test_price_is_not_a_model_input(plain: TrainResult, listings: pd.DataFrame) -> None:
    assert list(plain.pipeline.feature_names_in_) == list(FEATURE_NAMES)
    assert TARGET.name not in plain.pipeline.named_steps["encode"].get_feature_names_out()


def test_predictions_ignore_the_price_column(plain: TrainResult, listings: pd.DataFrame) -> None:
    rows = listings.head(20)
    without = plain.pipeline.predict(features(rows))

    np.testing.assert_array_equal(plain.pipeline.predict(rows), without)
    np.testing.assert_array_equal(plain.pipeline.predict(rows.assign(price=1)), without)


@pytest.mark.parametrize(("preset", "engineered"), [(PLAIN, ()), (LOGGED, ENGINEERED_FEATURES)])
def test_numeric_features_reach_the_model(
    preset: Preset, engineered: tuple[str, ...], listings: pd.DataFrame
) -> None:
    pipeline = build_pipeline(preset, seed=0).fit(features(listings), listings[TARGET.name])

    encode = pipeline.named_steps["encode"]
    assert list(encode.get_feature_names_out()) == [*CATEGORICAL_NAMES, *NUMERIC_NAMES, *engineered]
    assert encode.remainder == "passthrough"
    assert encode.transformers_[-1][0] == "remainder"
    assert list(encode.transformers_[-1][2]) == [*NUMERIC_NAMES, *engineered]


def test_usable_area_changes_the_price(plain: TrainResult, listings: pd.DataFrame) -> None:
    listing = features(listings).iloc[[0, 0]].reset_index(drop=True)
    listing["net_usable_area"] = [60.0, 300.0]
    listing["net_area"] = 320.0

    small, large = plain.pipeline.predict(listing)

    assert large > small


def test_categories_are_target_encoded(plain: TrainResult) -> None:
    name, encoder, columns = plain.pipeline.named_steps["encode"].transformers_[0]
    assert (name, type(encoder), columns) == (
        "target_encoding",
        TargetEncoder,
        list(CATEGORICAL_NAMES),
    )


def test_the_seed_reaches_the_estimator(
    plain: TrainResult, logged: TrainResult, tiny_params: Params
) -> None:
    assert plain.pipeline.named_steps["model"].random_state == tiny_params.seed
    assert logged.pipeline.named_steps["model"].regressor_.random_state == tiny_params.seed


@pytest.mark.parametrize(
    ("preset", "estimator"),
    [
        (PLAIN, lambda pipeline: pipeline.named_steps["model"]),
        (LOGGED, lambda pipeline: pipeline.named_steps["model"].regressor),
    ],
)
def test_build_pipeline_seeds_its_estimator(preset: Preset, estimator) -> None:
    assert estimator(build_pipeline(preset, seed=5)).random_state == 5


def test_same_params_give_the_same_model(
    logged: TrainResult, listings: pd.DataFrame, tiny_params: Params
) -> None:
    again = fit(listings, LOGGED, tiny_params)

    rows = features(listings.head(50))
    np.testing.assert_array_equal(again.pipeline.predict(rows), logged.pipeline.predict(rows))
    pd.testing.assert_frame_equal(
        again.cv_results.drop(columns="seconds"), logged.cv_results.drop(columns="seconds")
    )
    assert again.best_params == logged.best_params


def test_fit_reports_cross_validated_metrics(plain: TrainResult) -> None:
    assert set(plain.cv_metrics) == {f"cv_{m}{s}" for m in METRICS for s in ("", "_std")} | {
        "size_nodes",
        "size_mb",
    }
    best = plain.cv_results.iloc[0]
    assert plain.cv_metrics == {
        **{f"cv_{m}": best[f"mean_test_{m}"] for m in METRICS},
        **{f"cv_{m}_std": best[f"std_test_{m}"] for m in METRICS},
        "size_nodes": best["size_nodes"],
        "size_mb": best["size_mb"],
    }
    # Errors are reported as positive numbers, R² as is.
    assert 0 < plain.cv_metrics["cv_mae"] < plain.cv_metrics["cv_rmse"]
    assert 0 < plain.cv_metrics["cv_mape"] < 1
    assert 0 < plain.cv_metrics["cv_r2"] <= 1
    assert all(plain.cv_metrics[f"cv_{m}_std"] > 0 for m in METRICS)


def test_cv_results_has_one_row_per_candidate_searched_best_first(
    plain: TrainResult, tiny_params: Params
) -> None:
    table = plain.cv_results

    assert list(table.columns) == CV_COLUMNS
    assert len(table) == tiny_params.search_iterations
    assert table["mean_test_mae"].is_monotonic_increasing
    assert table["chosen"].tolist() == [True] + [False] * (len(table) - 1)
    assert (table["size_nodes"] > 0).all()
    assert table["candidate"].str.startswith("RandomForestRegressor_").all()
    assert {"estimator": "RandomForestRegressor", **ast.literal_eval(table["params"][0])} == (
        plain.best_params
    )
    assert plain.best_params["min_samples_leaf"] in FOREST.params["min_samples_leaf"]
    assert plain.best_params["n_estimators"] == 8


def test_a_size_limit_refits_the_best_candidate_under_it(
    plain: TrainResult, listings: pd.DataFrame, tiny_params: Params
) -> None:
    sizes = plain.cv_results["size_mb"]
    limit = (sizes.min() + sizes.max()) / 2
    under = plain.cv_results[sizes <= limit]
    expected = under.loc[under["mean_test_mae"].idxmin()]

    result = fit(listings, PLAIN, replace(tiny_params, selection=Selection(max_model_mb=limit)))

    chosen = result.cv_results[result.cv_results["chosen"]].iloc[0]
    assert chosen["candidate"] == expected["candidate"] != plain.cv_results["candidate"][0]
    assert result.best_params == {
        "estimator": "RandomForestRegressor",
        **ast.literal_eval(expected["params"]),
    }
    assert result.cv_metrics["cv_mae"] == expected["mean_test_mae"]
    assert result.cv_metrics["size_mb"] == expected["size_mb"] <= limit
    forest = result.pipeline.named_steps["model"]
    assert forest.min_samples_leaf == result.best_params["min_samples_leaf"]


def test_search_is_capped_by_the_size_of_the_grid(
    listings: pd.DataFrame, tiny_params: Params
) -> None:
    result = fit(listings.head(400), PLAIN, replace(tiny_params, search_iterations=50))

    assert len(result.cv_results) == len(FOREST.params["min_samples_leaf"])
    searched = [ast.literal_eval(p)["min_samples_leaf"] for p in result.cv_results["params"]]
    assert sorted(searched) == FOREST.params["min_samples_leaf"]


def test_best_params_are_readable_for_log_target_presets(logged: TrainResult) -> None:
    assert set(logged.best_params) == {"estimator", "n_estimators", "min_samples_leaf"}
    assert logged.best_params["estimator"] == "RandomForestRegressor"


def test_each_candidate_gives_at_most_search_iterations_configurations(
    params: Params,
) -> None:
    preset = params.preset("default")

    configured = candidates(preset, params)

    for candidate in preset.candidates:
        names = [n for n, _, _ in configured if n.rsplit("_", 1)[0] == candidate.estimator]
        assert 1 <= len(names) <= params.search_iterations
    assert all(
        type(_regressor(pipeline)).__name__ == name.rsplit("_", 1)[0]
        and _regressor(pipeline).random_state == params.seed
        for name, _, pipeline in configured
    )


def _regressor(pipeline: Pipeline):
    model = pipeline.named_steps["model"]
    return getattr(model, "regressor", model)


@pytest.mark.parametrize(("config", "logged"), [({}, True), ({"log_target": False}, False)])
def test_a_configuration_may_override_the_presets_target(config: dict, logged: bool) -> None:
    model = regressor(LOGGED, "RandomForestRegressor", {"n_estimators": 3, **config}, seed=4)

    assert isinstance(model, TransformedTargetRegressor) is logged
    assert _regressor(Pipeline([("model", model)])).get_params()["n_estimators"] == 3


def test_the_notebook_preset_is_the_notebook_model_fixed(params: Params) -> None:
    preset = params.preset("notebook")
    ((_, _, pipeline),) = candidates(preset, params)

    assert [name for name, _ in pipeline.steps] == ["encode", "model"]
    encode, model = pipeline.named_steps["encode"], pipeline.named_steps["model"]
    assert [(name, type(t), cols) for name, t, cols in encode.transformers] == [
        ("target_encoding", TargetEncoder, list(CATEGORICAL_NAMES))
    ]
    assert encode.remainder == "passthrough"
    assert type(model) is GradientBoostingRegressor
    assert {
        k: model.get_params()[k]
        for k in ("learning_rate", "n_estimators", "max_depth", "loss", "random_state")
    } == {
        "learning_rate": 0.01,
        "n_estimators": 300,
        "max_depth": 5,
        "loss": "absolute_error",
        "random_state": params.seed,
    }


def test_log_target_presets_regress_the_log_of_the_price(params: Params) -> None:
    pipeline = build_pipeline(params.preset("default"), params.seed)

    assert [name for name, _ in pipeline.steps] == ["features", "encode", "model"]
    model = pipeline.named_steps["model"]
    assert isinstance(model, TransformedTargetRegressor)
    assert (model.func, model.inverse_func) == (np.log, np.exp)
    assert isinstance(pipeline, Pipeline)
