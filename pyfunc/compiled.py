"""The fitted regressor as treelite models: its predictions without scikit-learn.

treelite walks all trees row after row: for a few rows it answers in well under a millisecond
where scikit-learn spends one Python call (or one OpenMP team) per tree; for large batches it is
slower than scikit-learn's own predict (about 2x on 10,000 rows), but it prices every batch
size, so that the served model does not keep (nor load) the scikit-learn objects at all.
`compile_regressor` knows forests, extra trees, (histogram) gradient boosting and a Voting or
Stacking regressor over them (each member on the price or on its log); None for any other.
`save` and `load` keep the compiled form in a folder (treelite's own serialization; a Stacking
regressor, whose final estimator is scikit-learn's, is not saved).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]
INDEX = "regressor.json"


@dataclass(frozen=True)
class Trees:
    """One treelite model; `as_float32`: its input is rounded to float32 first (scikit-learn's
    decision trees compare features as float32, histogram boosting as float64); `exp`: it was
    fitted on the log of the price."""

    model: Any  # treelite.Model
    as_float32: bool
    exp: bool = False

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        import treelite

        if self.as_float32:
            matrix = matrix.astype(np.float32).astype(np.float64)
        predicted = treelite.gtil.predict(self.model, matrix, nthread=1).reshape(len(matrix))
        return np.exp(predicted) if self.exp else predicted


@dataclass(frozen=True)
class CompiledRegressor:
    """One regressor of trees, or the weighted average of several (a VotingRegressor), or a
    final estimator on their predictions (a StackingRegressor: `final`, not saved)."""

    members: tuple[Trees, ...]
    weights: tuple[float, ...] | None = None
    average: bool = False
    final: Predictor | None = None
    passthrough: bool = False

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        if not self.average and self.final is None:
            return self.members[0](matrix)
        predictions = [member(matrix) for member in self.members]
        if self.final is not None:
            stacked = predictions + ([matrix] if self.passthrough else [])
            return np.asarray(self.final(np.column_stack(stacked)), dtype=np.float64).ravel()
        return np.average(np.column_stack(predictions), axis=1, weights=self.weights)

    @property
    def savable(self) -> bool:
        return self.final is None

    def save(self, folder: Path) -> None:
        """Each member as a treelite file, and how they combine as JSON, into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        members = []
        for number, member in enumerate(self.members):
            name = f"member-{number}.treelite"
            member.model.serialize(str(folder / name))
            members.append({"file": name, "as_float32": member.as_float32, "exp": member.exp})
        index = {"members": members, "weights": self.weights, "average": self.average}
        (folder / INDEX).write_text(json.dumps(index, indent=2))

    @classmethod
    def load(cls, folder: Path) -> CompiledRegressor:
        import treelite

        index = json.loads((folder / INDEX).read_text())
        members = tuple(
            Trees(treelite.Model.deserialize(str(folder / m["file"])), m["as_float32"], m["exp"])
            for m in index["members"]
        )
        weights = None if index["weights"] is None else tuple(index["weights"])
        return cls(members, weights, index["average"])


def compile_regressor(regressor) -> CompiledRegressor | None:
    """The regressor's trees as treelite models, or None if it is not made of known trees."""
    from sklearn.ensemble import StackingRegressor, VotingRegressor

    if isinstance(regressor, VotingRegressor):
        return _voting(regressor)
    if isinstance(regressor, StackingRegressor):
        return _stacking(regressor)
    trees = _trees(regressor)
    return None if trees is None else CompiledRegressor((trees,))


def _trees(estimator, exp: bool = False) -> Trees | None:
    import treelite
    from sklearn import ensemble as sk

    families = (sk.ExtraTreesRegressor, sk.GradientBoostingRegressor, sk.RandomForestRegressor)
    as_float32 = type(estimator) is not sk.HistGradientBoostingRegressor
    if as_float32 and type(estimator) not in families:
        return None
    return Trees(treelite.sklearn.import_model(estimator), as_float32, exp)


def _members(ensemble) -> tuple[Trees, ...] | None:
    members = [_member(estimator) for estimator in ensemble.estimators_]
    return tuple(m for m in members if m is not None) if None not in members else None


def _member(estimator) -> Trees | None:
    """Trees, or trees fitted on the log of the price (a TransformedTargetRegressor of them)."""
    from sklearn.compose import TransformedTargetRegressor

    if not isinstance(estimator, TransformedTargetRegressor):
        return _trees(estimator)
    if estimator.func is not np.log or estimator.inverse_func is not np.exp:
        return None
    return _trees(estimator.regressor_, exp=True)


def _voting(voting) -> CompiledRegressor | None:
    """The members' weighted average, as VotingRegressor.predict computes it."""
    members = _members(voting)
    if members is None:
        return None
    kept = [estimator != "drop" for _, estimator in voting.estimators]
    weights = None if voting.weights is None else np.compress(kept, voting.weights).tolist()
    return CompiledRegressor(members, None if weights is None else tuple(weights), average=True)


def _stacking(stacking) -> CompiledRegressor | None:
    """The final estimator on the members' predictions (and the features, with passthrough)."""
    members = _members(stacking)
    if members is None or set(stacking.stack_method_) != {"predict"}:
        return None
    final = stacking.final_estimator_.predict
    return CompiledRegressor(members, final=final, passthrough=stacking.passthrough)
