"""Engineered features, part of the fitted pipeline (so serving computes them identically)."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Santiago's main business district (El Golf, Las Condes): prices fall with distance to it.
BUSINESS_DISTRICT = (-33.4150, -70.6010)
KM_PER_DEGREE = 111.2

ENGINEERED_FEATURES = ("km_to_business_district",)


def add_engineered_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with the distance to the business district, in km.

    Area ratios (usable/total, area per room) are left out on purpose: they would make the
    price depend on usable area through more than one column, and so break the guarantee
    that more usable area never lowers the price (a monotonic constraint on one column).
    """
    out = frame.copy()
    lat0, lon0 = BUSINESS_DISTRICT
    dy = (frame["latitude"] - lat0) * KM_PER_DEGREE
    dx = (frame["longitude"] - lon0) * KM_PER_DEGREE * np.cos(np.radians(lat0))
    out["km_to_business_district"] = np.hypot(dx, dy)
    return out
