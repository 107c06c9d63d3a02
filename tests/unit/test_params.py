"""steps.params: params.yaml read into typed objects; every broken variant is a ParamsError."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from steps.params import (
    DEFAULT_PARAMS_PATH,
    ESTIMATORS,
    Params,
    ParamsError,
    Selection,
    ShadowGate,
    load_params,
)

COMMITTED = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())


def test_committed_params_load_as_written(params: Params) -> None:
    assert params.seed == COMMITTED["seed"]
    assert params.test_size == COMMITTED["split"]["test_size"]
    assert params.cv_folds == COMMITTED["cv"]["folds"]
    assert params.search_iterations == COMMITTED["cv"]["search_iterations"]
    assert params.promotion_tolerance == COMMITTED["promotion"]["tolerance"]
    assert params.importance_rows == COMMITTED["evaluation"]["importance_rows"]
    assert params.interval_coverage == COMMITTED["interval"]["coverage"] == 0.8
    assert params.default_preset == COMMITTED["preset"]
    assert params.selection == Selection(max_model_mb=None, size_weight=0.0)
    assert params.shadow_gate == ShadowGate(min_requests=0, min_outcomes=0)
    assert COMMITTED["promotion"]["shadow"] == {"min_requests": 0, "min_outcomes": 0}
    assert COMMITTED["selection"] == {"max_model_mb": None, "size_weight": 0}
    assert list(params.presets) == list(COMMITTED["presets"])
    for name, raw in COMMITTED["presets"].items():
        preset = params.presets[name]
        assert (preset.name, preset.engineered_features, preset.log_target) == (
            name,
            raw["engineered_features"],
            raw["log_target"],
        )
        assert [(c.estimator, c.params) for c in preset.candidates] == [
            (c["estimator"], c["params"]) for c in raw["candidates"]
        ]
        assert {c.estimator for c in preset.candidates} <= set(ESTIMATORS)
        assert preset.ensemble is raw.get("ensemble", False)


def test_committed_params_keep_the_notebook_baseline(params: Params) -> None:
    assert {"notebook", params.default_preset} <= set(params.presets)


def test_preset_lookup(params: Params) -> None:
    assert params.preset(None) is params.presets[params.default_preset]
    assert params.preset("notebook") is params.presets["notebook"]
    with pytest.raises(
        ParamsError,
        match=re.escape("unknown preset 'fancy'; params.yaml defines: notebook, default"),
    ):
        params.preset("fancy")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        pytest.param(None, Selection(None, 0.0), id="no-section"),
        pytest.param({"max_model_mb": 120}, Selection(120.0, 0.0), id="limit"),
        pytest.param({"size_weight": 0.002}, Selection(None, 0.002), id="weight"),
        pytest.param({"max_model_mb": None, "size_weight": None}, Selection(), id="nulls"),
    ],
)
def test_selection_reads_a_limit_and_a_weight(
    tmp_path: Path, section: dict | None, expected: Selection
) -> None:
    raw = copy.deepcopy(COMMITTED)
    if section is None:
        del raw["selection"]
    else:
        raw["selection"] = section
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))

    assert load_params(path).selection == expected


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A change of params.yaml: the entry at dotted `path` set to `value`."""

    def change(raw: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            raw = raw[int(key)] if isinstance(raw, list) else raw[key]
        raw[last] = value

    return change


def _delete(path: str) -> Callable[[dict], None]:
    def change(raw: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            raw = raw[int(key)] if isinstance(raw, list) else raw[key]
        del raw[last]

    return change


ESTIMATOR = "presets.default.candidates.0"


def says(message: str) -> str:
    """A pattern matching `message` literally; PATH stands for the params file."""
    return re.escape(message)


BROKEN = [
    pytest.param(
        _set("preset", "fancy"),
        says("unknown preset 'fancy'; params.yaml defines: notebook, default"),
        id="unknown-preset",
    ),
    pytest.param(
        _set(f"{ESTIMATOR}.estimator", "XGBRegressor"),
        says(
            "PATH: preset default: unknown estimator 'XGBRegressor'; known: "
            "GradientBoostingRegressor, HistGradientBoostingRegressor, "
            "RandomForestRegressor, ExtraTreesRegressor"
        ),
        id="unknown-estimator",
    ),
    pytest.param(
        _set("split.test_size", 1.5),
        says("PATH: split.test_size must be between 0 and 1"),
        id="test-size-1.5",
    ),
    pytest.param(
        _set("split.test_size", 0),
        says("PATH: split.test_size must be between 0 and 1"),
        id="test-size-0",
    ),
    pytest.param(
        _set("cv.folds", 1),
        says("PATH: cv.folds must be >= 2 and cv.search_iterations >= 1"),
        id="one-fold",
    ),
    pytest.param(
        _set("cv.search_iterations", 0),
        says("PATH: cv.folds must be >= 2 and cv.search_iterations >= 1"),
        id="no-iterations",
    ),
    pytest.param(
        _set("promotion.tolerance", -0.01),
        says("PATH: promotion.tolerance must be >= 0"),
        id="negative-tolerance",
    ),
    pytest.param(
        _set("interval.coverage", 1.0),
        says("PATH: interval.coverage must be between 0 and 1"),
        id="coverage-1",
    ),
    pytest.param(
        _set("interval.coverage", 0),
        says("PATH: interval.coverage must be between 0 and 1"),
        id="coverage-0",
    ),
    pytest.param(
        _set("selection.max_model_mb", 0),
        says("PATH: selection.max_model_mb must be > 0 MB, or null for no limit (got 0)"),
        id="limit-0",
    ),
    pytest.param(
        _set("selection.max_model_mb", "ten"),
        says("PATH: selection.max_model_mb must be a number, got 'ten'"),
        id="limit-not-a-number",
    ),
    pytest.param(
        _set("selection.size_weight", -0.5),
        says("PATH: selection.size_weight must be >= 0 (a share of CV MAE per MB; got -0.5)"),
        id="negative-weight",
    ),
    pytest.param(
        _set("selection.size_weight", True),
        says("PATH: selection.size_weight must be a number, got True"),
        id="weight-a-flag",
    ),
    pytest.param(
        _set("selection.max_mb", 100),
        says("PATH: selection: unknown entry 'max_mb'; known: max_model_mb, size_weight"),
        id="unknown-selection-entry",
    ),
    pytest.param(
        _set("promotion.shadow.min_requests", -1),
        says(
            "PATH: promotion.shadow.min_requests must be a whole number >= 0 (0: not required), "
            "got -1"
        ),
        id="negative-shadow-requests",
    ),
    pytest.param(
        _set("promotion.shadow.min_outcomes", 2.5),
        says(
            "PATH: promotion.shadow.min_outcomes must be a whole number >= 0 (0: not required), "
            "got 2.5"
        ),
        id="fractional-shadow-outcomes",
    ),
    pytest.param(
        _set("promotion.shadow.requests", 100),
        says("PATH: promotion.shadow: unknown entry 'requests'; known: min_requests, min_outcomes"),
        id="unknown-shadow-entry",
    ),
    pytest.param(_delete("seed"), says("PATH: missing or invalid entry ('seed')"), id="no-seed"),
    pytest.param(
        _delete("cv.folds"), says("PATH: missing or invalid entry ('folds')"), id="no-folds"
    ),
    pytest.param(
        _delete("presets.default.log_target"),
        says("PATH: missing or invalid entry ('log_target')"),
        id="preset-without-flag",
    ),
    pytest.param(
        _delete(f"{ESTIMATOR}.estimator"),
        says("PATH: missing or invalid entry ('estimator')"),
        id="candidate-without-name",
    ),
    pytest.param(
        _set("seed", "forty-two"),
        says(
            "PATH: missing or invalid entry (invalid literal for int() with base 10: 'forty-two')"
        ),
        id="seed-not-a-number",
    ),
    pytest.param(
        _set(f"{ESTIMATOR}.params.max_iter", 300),
        says("PATH: preset default: max_iter must be a list of values to search, e.g. [300]"),
        id="number-instead-of-a-list",
    ),
    # A preset without candidates loads, then train fails with IndexError in build_pipeline.
    pytest.param(
        _set("presets.default.candidates", []),
        says("PATH: ") + r".*\bdefault\b.*\bcandidates?\b",
        id="no-candidates",
    ),
    # A text instead of a list of values is split into characters: ['a', 'b', 's', ...].
    pytest.param(
        _set(f"{ESTIMATOR}.params.loss", "absolute_error"),
        says("PATH: ") + r".*\bloss\b.*\blist\b",
        id="text-instead-of-a-list",
    ),
]


@pytest.mark.parametrize(("change", "pattern"), BROKEN)
def test_broken_params_are_refused_with_the_problem_named(
    tmp_path: Path, change: Callable[[dict], None], pattern: str
) -> None:
    raw = copy.deepcopy(COMMITTED)
    change(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))

    with pytest.raises(ParamsError, match=pattern.replace("PATH", re.escape(str(path)))):
        load_params(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "",
            "{path}: missing or invalid entry ('NoneType' object is not subscriptable)",
            id="empty-file",
        ),
        pytest.param(
            "seed: [42\n", "{path}: missing or invalid entry (while parsing", id="yaml-syntax"
        ),
        pytest.param(
            "- 1\n- 2\n", "{path}: missing or invalid entry (list indices must be", id="a-list"
        ),
    ],
)
def test_unreadable_yaml_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)

    with pytest.raises(ParamsError, match=re.escape(message.format(path=path))):
        load_params(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"

    with pytest.raises(ParamsError, match=f"^{re.escape(f'params file not found: {path}')}$"):
        load_params(path)
