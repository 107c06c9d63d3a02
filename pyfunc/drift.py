"""Feature drift: how far recent inputs are from the training data, per feature.

The score is the population stability index (PSI) over the bins of the training profile
(`pyfunc.profile`): deciles for numeric features, one bin per category (plus one for unseen
values). 0 means distributed like the training data; by the usual rule of thumb, below 0.1 is
stable, 0.1 to 0.25 a moderate shift and above DRIFT_THRESHOLD = 0.25 a significant one.
Pure Python, so the gateway can compute it without numpy or pandas.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

DRIFT_THRESHOLD = 0.25
MIN_ROWS = 100  # fewer recent values than this give no score: too noisy to mean anything
_FLOOR = 1e-4  # share given to an empty bin, so the logarithm stays finite


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two share vectors over the same bins."""
    pairs = [(max(e, _FLOOR), max(a, _FLOOR)) for e, a in zip(expected, actual, strict=True)]
    return sum(((a - e) * math.log(a / e) for e, a in pairs), 0.0)


def numeric_shares(values: Iterable[float], edges: Sequence[float]) -> list[float]:
    """Share of `values` in each bin that `edges` (inner bin edges) make."""
    counts = Counter(bisect_right(edges, value) for value in values)
    n = sum(counts.values())
    return [counts[b] / n if n else 0.0 for b in range(len(edges) + 1)]


def categorical_shares(values: Iterable[str], categories: Sequence[str]) -> list[float]:
    """Share of each known category, then of everything else, in `values`."""
    counts = Counter(values)
    n = sum(counts.values())
    known = [counts.get(c, 0) for c in categories]
    shares = [*known, n - sum(known)]
    return [s / n for s in shares] if n else [0.0] * len(shares)


def feature_drift(
    reference: Mapping[str, dict], columns: Mapping[str, Sequence]
) -> dict[str, float]:
    """PSI per feature of `columns` (feature -> recent values) against the training reference;
    features with fewer than MIN_ROWS recent values are left out."""
    scores = {}
    for name, ref in reference.items():
        values = columns.get(name, ())
        if len(values) < MIN_ROWS:
            continue
        if "edges" in ref:
            scores[name] = psi(ref["shares"], numeric_shares(values, ref["edges"]))
        else:
            categories = list(ref["shares"])
            expected = [*ref["shares"].values(), 0.0]
            scores[name] = psi(expected, categorical_shares(values, categories))
    return scores


def drifted(scores: Mapping[str, float], threshold: float = DRIFT_THRESHOLD) -> list[str]:
    return sorted(name for name, score in scores.items() if score > threshold)
