"""The feature schema: the single definition of what a listing is.

Training, ingest cleaning, the pyfunc validator, the gateway's OpenAPI document and the tests
all read these objects. Bounds are physical limits for residential property in the Santiago
metropolitan region, not the range of one sample; the range a model was trained on is learned
from data and stored with the model.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NumericFeature:
    name: str
    description: str
    minimum: float
    maximum: float
    example: float
    unit: str = ""
    integral: bool = False
    unreported: float | None = None  # outside the bounds, meaning "not reported": flagged

    def allowed(self) -> str:
        return f"{self.minimum:g} to {self.maximum:g}"

    def is_unreported(self, values: Any) -> Any:
        """Where values are the feature's "not reported" value (elementwise; never if none)."""
        return values == self.unreported


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    description: str
    example: str


CATEGORICAL_FEATURES: tuple[CategoricalFeature, ...] = (
    CategoricalFeature(
        "type", "Property type: 'casa' (house) or 'departamento' (apartment).", "departamento"
    ),
    CategoricalFeature(
        "sector", "Comuna of Santiago, e.g. 'las condes', 'vitacura', 'nunoa'.", "las condes"
    ),
)

NUMERIC_FEATURES: tuple[NumericFeature, ...] = (
    NumericFeature("net_usable_area", "Usable (built) area.", 10, 5_000, 140.0, "m2"),
    NumericFeature(
        "net_area",
        "Total area: the lot for houses, with terraces for apartments.",
        10,
        200_000,
        170.0,
        "m2",
        unreported=0,
    ),
    NumericFeature("n_rooms", "Number of rooms (bedrooms).", 0, 20, 3.0, integral=True),
    NumericFeature("n_bathroom", "Number of bathrooms.", 1, 20, 2.0, integral=True, unreported=0),
    NumericFeature("latitude", "Latitude, WGS84 degrees.", -34.3, -32.9, -33.4172),
    NumericFeature("longitude", "Longitude, WGS84 degrees.", -71.8, -69.8, -70.5476),
)

TARGET = NumericFeature("price", "Listing price.", 1_000, 1_000_000, 14_500.0, "UF")

FEATURES = CATEGORICAL_FEATURES + NUMERIC_FEATURES
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
CATEGORICAL_NAMES: tuple[str, ...] = tuple(f.name for f in CATEGORICAL_FEATURES)
NUMERIC_NAMES: tuple[str, ...] = tuple(f.name for f in NUMERIC_FEATURES)
NUMERIC_BY_NAME: dict[str, NumericFeature] = {f.name: f for f in NUMERIC_FEATURES}

PREDICTION_COLUMN = "price"
LOW_COLUMN = "price_low"  # the price range (80% by default, params.yaml `interval`)
HIGH_COLUMN = "price_high"
# Per row, the features priced with little support: outside the training range, or unreported.
FLAG_COLUMN = "outside_training_range"
INVALID_COLUMN = "invalid_reason"  # only with on_invalid_row="report" (batch scoring)

_SPACES = re.compile(r"\s+")


def normalize_category(value: str) -> str:
    """Canonical spelling of a category: lower case, no accents, single spaces.

    'Ñuñoa ', 'NUNOA' and 'nunoa' are the same sector.
    """
    decomposed = unicodedata.normalize("NFKD", value)
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", ascii_only).strip().lower()


def example_listing() -> dict[str, object]:
    """One valid listing built from the schema's examples."""
    return {f.name: f.example for f in FEATURES}
