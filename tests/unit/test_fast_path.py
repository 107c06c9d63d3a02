"""pyfunc.fastpath: the served model's hot path prices exactly as the fitted pipeline does, and
accepts exactly what `validate` accepts, with the same flags; anything else falls back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from pyfunc import fastpath
from pyfunc.profile import build_profile
from pyfunc.schema import FEATURE_NAMES, NUMERIC_FEATURES, TARGET, example_listing
from pyfunc.validation import validate
from steps.params import Candidate, Preset
from steps.train import build_pipeline

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

RELATIVE = 1e-9
SCORED_ROWS = 2_000
# Batch sizes, all priced by treelite.
CHUNKS = (1, 40, 500, SCORED_ROWS)


def preset(name: str, estimator: str, log_target: bool = True, **monotonic: int) -> Preset:
    return Preset(
        name,
        engineered_features=name != "notebook",
        log_target=log_target,
        candidates=(Candidate(estimator, {}),),
        monotonic=monotonic,
    )


DEFAULT = preset("default", "HistGradientBoostingRegressor", net_usable_area=1)
NOTEBOOK = preset("notebook", "GradientBoostingRegressor", log_target=False)
FOREST = preset("forest", "RandomForestRegressor")
EXTRA = preset("extra", "ExtraTreesRegressor")
VOTING = preset("voting", "RandomForestRegressor")
STACKING = preset("stacking", "RandomForestRegressor", log_target=False)
MIXED = preset("mixed", "RandomForestRegressor", log_target=False)  # what the default preset fits
RIDGE = preset("ridge", "RandomForestRegressor")


def settings(name: str) -> dict:
    """Small versions of each family the pipeline can fit, full-depth trees included."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import (
        ExtraTreesRegressor,
        HistGradientBoostingRegressor,
        RandomForestRegressor,
        StackingRegressor,
        VotingRegressor,
    )
    from sklearn.linear_model import Ridge, RidgeCV

    def members():
        return [
            ("forest", RandomForestRegressor(20, random_state=0)),
            ("boosting", HistGradientBoostingRegressor(max_iter=50, random_state=0)),
        ]

    return {
        "default": {
            "model__regressor__max_iter": 300,
            "model__regressor__max_leaf_nodes": 31,
            "model__regressor__early_stopping": False,
        },
        "notebook": {"model__n_estimators": 50, "model__max_depth": 5},
        "forest": {"model__regressor__n_estimators": 20},
        "extra": {"model__regressor__n_estimators": 20, "model__regressor__min_samples_leaf": 1},
        "voting": {"model__regressor": VotingRegressor(members(), weights=[2, 1])},
        "stacking": {"model": StackingRegressor(members(), RidgeCV(), cv=2, passthrough=True)},
        "ridge": {"model__regressor": VotingRegressor([("ridge", Ridge()), *members()])},
        "mixed": {
            "model": VotingRegressor(
                [
                    *[
                        (n, TransformedTargetRegressor(m, func=np.log, inverse_func=np.exp))
                        for n, m in members()
                    ],
                    ("extra", ExtraTreesRegressor(20, random_state=0)),
                ]
            )
        },
    }[name]


def features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(FEATURE_NAMES)].reset_index(drop=True)


def fitted(preset: Preset, train: pd.DataFrame) -> Pipeline:
    """On one thread: OpenMP teams on a busy machine make fitting many times slower."""
    from threadpoolctl import threadpool_limits

    pipeline = build_pipeline(preset, seed=0).set_params(**settings(preset.name))
    with threadpool_limits(1):
        return pipeline.fit(features(train), train[TARGET.name])


@pytest.fixture(scope="module")
def scored() -> pd.DataFrame:
    """2,000 listings the pipelines have not seen, some of them in a sector nobody knows."""
    from steps.generate import generate_listings

    frame = features(generate_listings(SCORED_ROWS, seed=11, dirty=False))
    frame.loc[frame.index % 97 == 5, "sector"] = "isla de pascua"
    return frame


@pytest.fixture(scope="module")
def profile(listings: pd.DataFrame) -> dict:
    return build_profile(listings)


@pytest.fixture(scope="module")
def fits(listings: pd.DataFrame) -> Callable[[Preset], Pipeline]:
    """Each preset's pipeline fitted on `listings`, once per module."""
    cache: dict[str, Pipeline] = {}

    def fit(preset: Preset) -> Pipeline:
        if preset.name not in cache:
            cache[preset.name] = fitted(preset, listings)
        return cache[preset.name]

    return fit


@pytest.fixture(
    params=[DEFAULT, NOTEBOOK, FOREST, EXTRA, VOTING, STACKING, MIXED], ids=lambda p: p.name
)
def pipeline(request: pytest.FixtureRequest, fits: Callable[[Preset], Pipeline]) -> Pipeline:
    return fits(request.param)


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(got - expected) / np.abs(expected)))


def test_fast_path_prices_like_the_pipeline(
    pipeline: Pipeline, profile: dict, scored: pd.DataFrame
) -> None:
    from threadpoolctl import threadpool_limits

    fast = fastpath.compile_pipeline(pipeline, profile["categories"], _ranges(profile))
    with threadpool_limits(1):
        expected = pipeline.predict(scored)

    assert fast is not None
    for size in CHUNKS:
        got = np.concatenate(
            [
                fast.predict(scored.iloc[start : start + size])
                for start in range(0, min(len(scored), 4 * size), size)
            ]
        )
        assert got.shape == expected[: len(got)].shape
        assert relative_difference(got, expected[: len(got)]) <= RELATIVE, f"batches of {size}"


def test_every_batch_size_is_priced_by_treelite_alone(
    profile: dict, fits, scored: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = fits(VOTING)
    fast = fastpath.compile_pipeline(pipeline, profile["categories"], _ranges(profile))
    expected = pipeline.predict(scored.iloc[:500])

    def refuse(matrix):
        raise AssertionError("scikit-learn's predict was called")

    for member in pipeline.named_steps["model"].regressor_.estimators_:
        monkeypatch.setattr(member, "predict", refuse)

    assert fast is not None
    assert relative_difference(fast.predict(scored.iloc[:40]), expected[:40]) <= RELATIVE
    assert relative_difference(fast.predict(scored.iloc[:500]), expected) <= RELATIVE


@pytest.mark.parametrize("name", ["default", "notebook", "mixed"])
def test_a_saved_fast_path_loads_and_prices_like_the_pipeline(
    name: str, profile: dict, fits, scored: pd.DataFrame, tmp_path
) -> None:
    pipeline = fits({"default": DEFAULT, "notebook": NOTEBOOK, "mixed": MIXED}[name])
    categories, ranges = profile["categories"], _ranges(profile)
    fast = fastpath.compile_pipeline(pipeline, categories, ranges)
    assert fast is not None and fast.savable
    fastpath.save(fast, fastpath.pipeline_prices(pipeline, categories, ranges), tmp_path)

    loaded = fastpath.load(tmp_path, categories, ranges)

    assert loaded is not None
    assert relative_difference(loaded.predict(scored), pipeline.predict(scored)) <= RELATIVE


def test_a_saved_fast_path_that_no_longer_prices_as_the_pipeline_is_refused(
    profile: dict, fits, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = fits(FOREST)
    categories, ranges = profile["categories"], _ranges(profile)
    fast = fastpath.compile_pipeline(pipeline, categories, ranges)
    assert fast is not None
    expected = fastpath.pipeline_prices(pipeline, categories, ranges)
    fastpath.save(fast, expected * (1 + 1e-6), tmp_path)

    with caplog.at_level("WARNING", logger=fastpath.__name__):
        assert fastpath.load(tmp_path, categories, ranges) is None
    assert [r.getMessage() for r in caplog.records] == [
        "fast path disagrees with the pipeline (relative 1e-06); not used"
    ]


def test_a_stacking_fast_path_cannot_be_saved(profile: dict, fits, tmp_path) -> None:
    fast = fastpath.compile_pipeline(fits(STACKING), profile["categories"], _ranges(profile))

    assert fast is not None and not fast.savable
    with pytest.raises(ValueError, match="parts of scikit-learn's: it cannot be saved"):
        fastpath.save(fast, np.zeros(fastpath.PROBE_ROWS), tmp_path)


def test_a_regressor_treelite_cannot_take_falls_back_with_one_warning(
    profile: dict, fits, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger=fastpath.__name__):
        fast = fastpath.compile_pipeline(fits(RIDGE), profile["categories"], _ranges(profile))

    assert fast is None
    assert [r.getMessage() for r in caplog.records] == [
        "no fast path for this pipeline's shape or regressor; predicting with the pipeline"
    ]


def test_an_unknown_pipeline_shape_has_no_fast_path(
    profile: dict, fits, listings: pd.DataFrame
) -> None:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = fits(NOTEBOOK)
    scaled = Pipeline([*pipeline.steps[:-1], ("scale", StandardScaler()), pipeline.steps[-1]])
    scaled.fit(features(listings), listings[TARGET.name])

    assert fastpath.compile_pipeline(scaled, profile["categories"], _ranges(profile)) is None


def test_a_fast_path_that_disagrees_is_refused(
    profile: dict, fits, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastpath, "km_to_business_district", lambda lat, lon: lat * 0)

    # Without the engineered feature the notebook's model is unaffected; the forest is not.
    assert fastpath.compile_pipeline(fits(NOTEBOOK), profile["categories"], _ranges(profile))
    assert fastpath.compile_pipeline(fits(FOREST), profile["categories"], _ranges(profile)) is None


def _ranges(profile: dict) -> dict[str, tuple[float, float]]:
    return {name: tuple(bounds) for name, bounds in profile["ranges"].items()}


KNOWN = {"type": ["casa", "departamento"], "sector": ["las condes", "nunoa", "vitacura"]}
WIDE = {f.name: (f.minimum, f.maximum) for f in NUMERIC_FEATURES}
NARROW = {
    **WIDE,
    "net_usable_area": (50.0, 200.0),
    "net_area": (60.0, 250.0),
    "latitude": (-33.5, -33.3),
}


def messy_listings(rows: int = 60) -> pd.DataFrame:
    """Valid listings in untidy spellings, some outside NARROW's training ranges."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame.from_records([example_listing() for _ in range(rows)])
    frame["type"] = rng.choice(["Casa", " DEPARTAMENTO", "departamento", "casa "], rows)
    frame["sector"] = rng.choice(["Las Condes", "Ñuñoa", "  VITACURA", "nunoa"], rows)
    frame["net_usable_area"] = rng.uniform(20, 400, rows)
    frame["net_area"] = rng.integers(30, 600, rows)  # integers: an int64 column
    frame["latitude"] = rng.uniform(-33.6, -33.2, rows)
    return frame


@pytest.mark.parametrize("ranges", [WIDE, NARROW], ids=["wide", "narrow"])
@pytest.mark.parametrize("policy", ["reject", "flag"])
def test_clean_input_is_checked_exactly_as_validate_does(ranges: dict, policy: str) -> None:
    frame = messy_listings()[list(reversed(FEATURE_NAMES))]
    frame.index = range(100, 100 + len(frame))

    fast = fastpath.check(frame, KNOWN, ranges, policy)
    slow = validate(frame, KNOWN, ranges, policy)

    assert fast is not None
    assert fast.flags == slow.flags
    assert any(fast.flags) == (ranges is NARROW)
    pd.testing.assert_frame_equal(fast.frame(), slow.frame)


def test_flag_policy_flags_unknown_categories_first_as_validate_does() -> None:
    frame = messy_listings(6)
    frame.loc[[1, 4], "sector"] = ["Marte", "Saturno"]
    frame.loc[4, "type"] = "oficina"

    fast = fastpath.check(frame, KNOWN, NARROW, "flag")
    slow = validate(frame, KNOWN, NARROW, "flag")

    assert fast is not None
    assert fast.flags == slow.flags
    assert fast.flags[4].startswith("type,sector")
    assert fast.columns["sector"].tolist() == slow.frame["sector"].tolist()


BAD = [
    pytest.param(lambda f: f.assign(net_area=f["net_area"].astype(str)), id="numbers-as-text"),
    pytest.param(lambda f: f.assign(n_rooms=True), id="booleans"),
    pytest.param(lambda f: f.assign(latitude=np.nan), id="nan"),
    pytest.param(lambda f: f.assign(net_area=np.inf), id="inf"),
    pytest.param(lambda f: f.assign(n_rooms=25), id="above-bound"),
    pytest.param(lambda f: f.assign(net_usable_area=-1.0), id="below-bound"),
    pytest.param(lambda f: f.assign(n_rooms=[2.5, *f["n_rooms"][1:]]), id="half-a-room"),
    pytest.param(lambda f: f.assign(sector="Marte"), id="unknown-sector-rejected"),
    pytest.param(lambda f: f.assign(type=5), id="type-as-number"),
    pytest.param(lambda f: f.assign(sector=[None, *f["sector"][1:]]), id="missing-sector"),
    pytest.param(lambda f: f.assign(price=1.0), id="extra-column"),
    pytest.param(lambda f: f.drop(columns="net_area"), id="missing-column"),
    pytest.param(lambda f: f.iloc[:0], id="no-rows"),
]


@pytest.mark.parametrize("spoil", BAD)
def test_anything_not_clean_is_left_to_validate(spoil) -> None:
    assert fastpath.check(spoil(messy_listings(5)), KNOWN, WIDE, "reject") is None


def test_an_unknown_policy_is_left_to_validate() -> None:
    assert fastpath.check(messy_listings(3), KNOWN, WIDE, "guess") is None
