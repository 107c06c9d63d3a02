"""Evaluation figures, drawn off-screen."""

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pyfunc.schema import TARGET


def predicted_vs_actual(actual: pd.Series, predicted: np.ndarray) -> Figure:
    figure = Figure(figsize=(6, 6))
    axes = figure.subplots()
    axes.scatter(actual, predicted, s=4, alpha=0.3)
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    axes.plot([low, high], [low, high], color="black", linewidth=1)
    axes.set(xscale="log", yscale="log", title="Predicted vs actual, test split")
    axes.set(xlabel="actual price (UF)", ylabel="predicted price (UF)")
    return figure


def residuals_by_sector(test: pd.DataFrame, predicted: np.ndarray) -> Figure:
    relative = (predicted - test[TARGET.name].to_numpy()) / test[TARGET.name].to_numpy()
    sectors = sorted(test["sector"].unique())
    groups = [relative[(test["sector"] == s).to_numpy()] for s in sectors]
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    axes.boxplot(groups, showfliers=False)
    axes.set_xticks(range(1, len(sectors) + 1), sectors, rotation=30)
    axes.axhline(0, color="black", linewidth=1)
    axes.set(ylabel="(predicted - actual) / actual", title="Relative residuals by sector")
    figure.tight_layout()
    return figure


def feature_importance(importances: pd.Series) -> Figure:
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    axes.barh(importances.index, importances.to_numpy())
    axes.set(xlabel="increase of MAE when shuffled (UF)", title="Permutation importance")
    figure.tight_layout()
    return figure


def intervals_by_sector(by_sector: pd.DataFrame, coverage: float) -> Figure:
    """Share of test prices inside their range, and its median relative width, per sector."""
    figure = Figure(figsize=(9, 4))
    inside, width = figure.subplots(1, 2)
    inside.bar(by_sector["sector"], by_sector["interval_coverage"])
    inside.axhline(coverage, color="black", linewidth=1)
    inside.set(ylim=(0, 1), ylabel="share of prices inside the range", title="Coverage, test")
    width.bar(by_sector["sector"], by_sector["interval_width"])
    width.set(ylabel="(high - low) / price, median", title="Width of the range, test")
    for axes in (inside, width):
        axes.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    return figure
