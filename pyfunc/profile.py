"""The training profile stored with every model: what the model has seen.

It holds the known categories (so a new sector in the client's data needs no code change),
the range of each numeric feature (to flag extrapolation) and a binned reference
distribution of every feature (to measure drift of the traffic later).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pyfunc.schema import CATEGORICAL_NAMES, NUMERIC_FEATURES, NUMERIC_NAMES, NumericFeature

REFERENCE_BINS = 10
PROFILE_PATH = "artifacts/profile.json"  # inside a logged model's directory


def build_profile(train: pd.DataFrame) -> dict:
    """Profile of the clean training features, JSON-serialisable."""
    return {
        "rows": len(train),
        "categories": {n: sorted(train[n].unique().tolist()) for n in CATEGORICAL_NAMES},
        "ranges": {f.name: _reported_range(train[f.name], f) for f in NUMERIC_FEATURES},
        "reference": {
            **{n: _numeric_reference(train[n]) for n in NUMERIC_NAMES},
            **{n: _categorical_reference(train[n]) for n in CATEGORICAL_NAMES},
        },
    }


def _reported_range(values: pd.Series, feature: NumericFeature) -> list[float]:
    """The range of the reported values: a "not reported" 0 is flagged anyway."""
    reported = values[~feature.is_unreported(values)]
    return [float(reported.min()), float(reported.max())]


def _numeric_reference(values: pd.Series) -> dict:
    """Inner decile edges and the share of training rows in each of the bins they make."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, REFERENCE_BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "shares": (counts / counts.sum()).tolist()}


def _categorical_reference(values: pd.Series) -> dict:
    shares = values.value_counts(normalize=True).sort_index()
    return {"shares": {str(k): float(v) for k, v in shares.items()}}
