"""`params.yaml`, read into typed, validated objects."""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from config.errors import UserError
from config.settings import PROJECT_DIR
from pyfunc.schema import NUMERIC_NAMES

DEFAULT_PARAMS_PATH = PROJECT_DIR / "params.yaml"
MONOTONIC_ESTIMATORS = (
    "HistGradientBoostingRegressor",
    "RandomForestRegressor",
    "ExtraTreesRegressor",
)
ESTIMATORS = ("GradientBoostingRegressor", *MONOTONIC_ESTIMATORS)


class ParamsError(UserError):
    """params.yaml is missing something or holds a value that cannot be used."""


@dataclass(frozen=True)
class Candidate:
    estimator: str
    params: dict[str, list]


@dataclass(frozen=True)
class Preset:
    name: str
    engineered_features: bool
    log_target: bool
    candidates: tuple[Candidate, ...]
    monotonic: dict[str, int] = field(default_factory=dict)
    ensemble: bool = False  # the average of the best configuration of each family competes too


@dataclass(frozen=True)
class Selection:
    """How model size weighs in the choice (params.yaml `selection`); the defaults leave the
    choice to CV MAE alone."""

    max_model_mb: float | None = None  # no candidate whose compiled trees exceed it is chosen
    size_weight: float = 0.0  # the choice minimises CV MAE x (1 + size_weight x MB)


@dataclass(frozen=True)
class ShadowGate:
    """What a version must have been through in shadow (as the challenger) before promote lets
    it replace the champion (params.yaml `promotion.shadow`); 0: not required."""

    min_requests: int = 0  # requests it priced in shadow
    min_outcomes: int = 0  # realized prices of the rows it priced in shadow


@dataclass(frozen=True)
class Params:
    seed: int
    test_size: float
    cv_folds: int
    search_iterations: int
    default_preset: str
    presets: dict[str, Preset]
    promotion_tolerance: float
    importance_rows: int
    interval_coverage: float
    selection: Selection = Selection()
    shadow_gate: ShadowGate = ShadowGate()

    def preset(self, name: str | None) -> Preset:
        chosen = name or self.default_preset
        if chosen not in self.presets:
            raise ParamsError(
                f"unknown preset {chosen!r}; params.yaml defines: {', '.join(self.presets)}"
            )
        return self.presets[chosen]


def load_params(path: Path = DEFAULT_PARAMS_PATH) -> Params:
    try:
        raw = yaml.safe_load(Path(path).read_text())
        params = Params(
            seed=int(raw["seed"]),
            test_size=float(raw["split"]["test_size"]),
            cv_folds=int(raw["cv"]["folds"]),
            search_iterations=int(raw["cv"]["search_iterations"]),
            default_preset=str(raw["preset"]),
            presets={n: _preset(n, p) for n, p in raw["presets"].items()},
            promotion_tolerance=float(raw["promotion"]["tolerance"]),
            importance_rows=int(raw["evaluation"]["importance_rows"]),
            interval_coverage=float(raw["interval"]["coverage"]),
            selection=_selection(raw.get("selection") or {}),
            shadow_gate=_shadow_gate(raw["promotion"].get("shadow") or {}),
        )
    except FileNotFoundError:
        raise ParamsError(f"params file not found: {path}") from None
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None
    except (KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError) as error:
        raise ParamsError(f"{path}: missing or invalid entry ({error})") from None
    _check(params, path)
    return params


def _preset(name: str, raw: dict) -> Preset:
    if not raw["candidates"]:
        raise ParamsError(f"preset {name}: candidates must list at least one estimator")
    candidates = tuple(
        Candidate(c["estimator"], {k: _values(name, k, v) for k, v in c.get("params", {}).items()})
        for c in raw["candidates"]
    )
    monotonic = {str(k): int(v) for k, v in (raw.get("monotonic") or {}).items()}
    engineered, log_target = bool(raw["engineered_features"]), bool(raw["log_target"])
    return Preset(name, engineered, log_target, candidates, monotonic, bool(raw.get("ensemble")))


def _selection(raw: dict) -> Selection:
    unknown = set(raw) - {"max_model_mb", "size_weight"}
    if unknown:
        raise ParamsError(
            f"selection: unknown entry {sorted(unknown)[0]!r}; known: max_model_mb, size_weight"
        )
    limit = raw.get("max_model_mb")
    selection = Selection(
        None if limit is None else _number("max_model_mb", limit),
        _number("size_weight", 0 if raw.get("size_weight") is None else raw["size_weight"]),
    )
    if selection.max_model_mb is not None and selection.max_model_mb <= 0:
        raise ParamsError(
            f"selection.max_model_mb must be > 0 MB, or null for no limit "
            f"(got {selection.max_model_mb:g})"
        )
    if selection.size_weight < 0:
        raise ParamsError(
            f"selection.size_weight must be >= 0 (a share of CV MAE per MB; got "
            f"{selection.size_weight:g})"
        )
    return selection


def _shadow_gate(raw: dict) -> ShadowGate:
    known = ("min_requests", "min_outcomes")
    if unknown := set(raw) - set(known):
        raise ParamsError(
            f"promotion.shadow: unknown entry {sorted(unknown)[0]!r}; known: {', '.join(known)}"
        )
    for key in known:
        value = raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ParamsError(
                f"promotion.shadow.{key} must be a whole number >= 0 (0: not required), "
                f"got {value!r}"
            )
    return ShadowGate(int(raw.get("min_requests", 0)), int(raw.get("min_outcomes", 0)))


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParamsError(f"selection.{key} must be a number, got {value!r}")
    return float(value)


def _values(preset: str, param: str, values: object) -> list:
    if not isinstance(values, list) or not values:
        raise ParamsError(
            f"preset {preset}: {param} must be a list of values to search, e.g. [{values!r}]"
        )
    return values


def _check(params: Params, path: Path) -> None:
    if not 0 < params.test_size < 1:
        raise ParamsError(f"{path}: split.test_size must be between 0 and 1")
    if params.cv_folds < 2 or params.search_iterations < 1:
        raise ParamsError(f"{path}: cv.folds must be >= 2 and cv.search_iterations >= 1")
    if params.promotion_tolerance < 0:
        raise ParamsError(f"{path}: promotion.tolerance must be >= 0")
    if not 0 < params.interval_coverage < 1:
        raise ParamsError(f"{path}: interval.coverage must be between 0 and 1")
    params.preset(params.default_preset)
    for preset in params.presets.values():
        _check_monotonic(preset, path)
        for candidate in preset.candidates:
            if candidate.estimator not in ESTIMATORS:
                raise ParamsError(
                    f"{path}: preset {preset.name}: unknown estimator {candidate.estimator!r}; "
                    f"known: {', '.join(ESTIMATORS)}"
                )
            if preset.monotonic and candidate.estimator not in MONOTONIC_ESTIMATORS:
                raise ParamsError(
                    f"{path}: preset {preset.name}: {candidate.estimator} cannot take monotonic "
                    f"constraints; use one of {', '.join(MONOTONIC_ESTIMATORS)}"
                )


def _check_monotonic(preset: Preset, path: Path) -> None:
    for name, direction in preset.monotonic.items():
        if name not in NUMERIC_NAMES:
            raise ParamsError(
                f"{path}: preset {preset.name}: monotonic: {name!r} is not a "
                f"numeric feature ({', '.join(NUMERIC_NAMES)})"
            )
        if direction not in (-1, 1):
            raise ParamsError(
                f"{path}: preset {preset.name}: monotonic: {name} must be 1 "
                f"(increasing) or -1 (decreasing), got {direction}"
            )
