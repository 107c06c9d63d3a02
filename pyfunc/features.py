"""Engineered features, part of the fitted pipeline (so serving computes them identically)."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Santiago's main business district (El Golf, Las Condes): prices fall with distance to it.
BUSINESS_DISTRICT = (-33.4150, -70.6010)
KM_PER_DEGREE = 111.2

ENGINEERED_FEATURES = ("usable_to_total_ratio", "usable_area_per_room", "km_to_business_district")


def add_engineered_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with ratio, per-room area and distance-to-business-district columns."""
    out = frame.copy()
    out["usable_to_total_ratio"] = frame["net_usable_area"] / frame["net_area"]
    out["usable_area_per_room"] = frame["net_usable_area"] / np.maximum(frame["n_rooms"], 1)
    lat0, lon0 = BUSINESS_DISTRICT
    dy = (frame["latitude"] - lat0) * KM_PER_DEGREE
    dx = (frame["longitude"] - lon0) * KM_PER_DEGREE * np.cos(np.radians(lat0))
    out["km_to_business_district"] = np.hypot(dx, dy)
    return out
