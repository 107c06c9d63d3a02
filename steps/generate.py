"""Generate realistic synthetic listings in the client's schema, dirty rows included.

Reads nothing. Writes ``train.csv`` and ``test.csv`` to a folder, or tables ``train`` and
``test`` to any SQLAlchemy URL. ``SECTORS`` and ``DIRT_COUNTS`` reproduce the aggregates known
of the client's private files (CHALLENGE.md): they describe this synthetic world, not the
feature schema, which lives in ``pyfunc.schema``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import click
import numpy as np
import pandas as pd
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from pyfunc.schema import FEATURE_NAMES, TARGET, normalize_category

logger = logging.getLogger(__name__)


class Sector(NamedTuple):
    """One comuna of the synthetic world: where its listings lie, their mix and prices."""

    name: str
    train_rows: int  # listings in the client's train.csv
    latitude: float  # centre of the sector's listings
    longitude: float
    lat_sd: float  # spread of the listings, degrees
    lon_sd: float
    casa_share: float
    casa_price: int  # median price, UF
    casa_uf_m2: float  # median UF per m2 of usable area
    casa_lot: float  # median lot (net_area), m2
    depto_price: int
    depto_uf_m2: float


SECTORS: tuple[Sector, ...] = (
    Sector("Las Condes",   5634, -33.410, -70.560, 0.014, 0.022, 0.35, 18_500, 81, 600, 10_346, 87),
    Sector("Vitacura",     2902, -33.385, -70.580, 0.010, 0.016, 0.45, 22_000, 96, 800, 13_100, 88),
    Sector("Lo Barnechea", 2888, -33.352, -70.515, 0.012, 0.024, 0.60, 25_000, 78, 956, 13_200, 82),
    Sector("Ñuñoa",        1924, -33.457, -70.600, 0.010, 0.012, 0.30, 11_592, 68, 300, 5_227, 72),
    Sector("Providencia",  1849, -33.430, -70.612, 0.008, 0.011, 0.20, 15_400, 78, 320, 7_167, 86),
    Sector("La Reina",     1015, -33.445, -70.545, 0.010, 0.014, 0.65, 13_200, 70, 550, 7_725, 74),
)
LATITUDE_RANGE = (-33.52, -33.31)  # every clean listing lies in this box
LONGITUDE_RANGE = (-70.64, -70.43)
AREA_SIGMA = (0.48, 0.40)  # log-sd of usable area around the typical size: casa, departamento
AREA_EXPONENT = 0.9  # price grows a little slower than area
LOT_EXPONENT = 0.12  # houses: price elasticity to the lot
LOCATION_EFFECT = 0.3  # log-price gained across a sector towards its north-east
NOISE_SIGMA = 0.12  # multiplicative lognormal noise of a listing's price
# Micro-location: hot and cold spots (parks, metro, busy roads) a few hundred metres wide.
# They belong to the world, not to a sample: drawn from WORLD_SEED, the same for every seed.
WORLD_SEED = 20_240_601
NEIGHBOURHOODS = 60
NEIGHBOURHOOD_SD = 0.15  # log-price effect of a spot at its centre
NEIGHBOURHOOD_RADIUS = 0.006  # degrees, about 600 m

REFERENCE_ROWS = 16_212  # rows of the client's train.csv, the scale of DIRT_COUNTS
DIRT_COUNTS: dict[str, int] = {
    "price_zero": 1, "price_under_1000": 19, "zero_areas": 32, "usable_over_total": 170,
    "absurd_areas": 10, "many_rooms": 10, "zero_bathrooms": 131, "swapped_coordinates": 15,
    "far_coordinates": 10, "duplicates": 22,
}
FAR_PLACES = ((0.0, 0.0), (-36.827, -73.050), (-23.650, -70.400), (-41.469, -72.942))

COLUMNS: tuple[str, ...] = (*FEATURE_NAMES, TARGET.name)


def _coordinates(world: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Latitude, longitude and the location's price factor (pricier towards the north-east)."""
    z_lat, z_lon = rng.standard_normal((2, len(world)))
    lat = np.clip(world["latitude"] + z_lat * world["lat_sd"], *LATITUDE_RANGE).round(6)
    lon = np.clip(world["longitude"] + z_lon * world["lon_sd"], *LONGITUDE_RANGE).round(6)
    towards_ne = ((lat - world["latitude"]) / world["lat_sd"]
                  + (lon - world["longitude"]) / world["lon_sd"]) / np.sqrt(2)
    lat, lon = lat.to_numpy(), lon.to_numpy()
    factor = np.exp(LOCATION_EFFECT * np.tanh(towards_ne.to_numpy())) * _neighbourhood(lat, lon)
    return lat, lon, factor


def _neighbourhood(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Price factor of the hot and cold spots around each location."""
    world = np.random.default_rng(WORLD_SEED)
    spot_lat = world.uniform(*LATITUDE_RANGE, NEIGHBOURHOODS)
    spot_lon = world.uniform(*LONGITUDE_RANGE, NEIGHBOURHOODS)
    effect = world.normal(0.0, NEIGHBOURHOOD_SD, NEIGHBOURHOODS)
    distance2 = (lat[:, None] - spot_lat) ** 2 + (lon[:, None] - spot_lon) ** 2
    return np.exp((effect * np.exp(-distance2 / (2 * NEIGHBOURHOOD_RADIUS**2))).sum(axis=1))


def _total_area(usable: np.ndarray, ratio: np.ndarray, lot: np.ndarray, casa: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """net_area (the lot of a house, usable plus terraces for a flat) and the lot's price factor."""
    house_lot = lot * ratio**0.5 * rng.lognormal(0.0, 0.35, len(usable))
    flat_total = usable * (1.0 + rng.lognormal(np.log(0.07), 0.5, len(usable)))
    total = np.where(casa, np.clip(house_lot, usable * 1.1, 50_000), flat_total).round()
    return total, np.where(casa, (total / lot) ** LOT_EXPONENT, 1.0)


def _rooms(usable: np.ndarray, casa: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rooms and bathrooms growing with area, and their small price factor."""
    expected_rooms = np.where(casa, 1.5 + usable / 70, 0.6 + usable / 45)
    expected_baths = np.where(casa, 0.6 + usable / 75, 0.3 + usable / 60)
    rooms = np.clip((expected_rooms + rng.normal(0, 0.7, len(usable))).round(), 1, 12)
    baths = np.clip((expected_baths + rng.normal(0, 0.6, len(usable))).round(), 1, 10)
    factor = np.exp(0.04 * (baths - expected_baths) - 0.02 * (rooms - expected_rooms))
    return rooms, baths, factor


def _clean_listings(n_rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Listings drawn from the synthetic world, all inside the schema's bounds."""
    table = pd.DataFrame(list(SECTORS))
    shares = table["train_rows"] / table["train_rows"].sum()
    world = table.iloc[rng.choice(len(table), size=n_rows, p=shares)].reset_index(drop=True)
    casa = rng.random(n_rows) < world["casa_share"].to_numpy()
    median_price = np.where(casa, world["casa_price"], world["depto_price"])
    typical_area = median_price / np.where(casa, world["casa_uf_m2"], world["depto_uf_m2"])
    spread = np.where(casa, *AREA_SIGMA)
    usable = np.clip(typical_area * rng.lognormal(0.0, spread), 30, 3_000).round()
    ratio = usable / typical_area
    total, lot_factor = _total_area(usable, ratio, world["casa_lot"].to_numpy(), casa, rng)
    latitude, longitude, location = _coordinates(world, rng)
    rooms, baths, layout = _rooms(usable, casa, rng)
    noise = rng.lognormal(0.0, NOISE_SIGMA, n_rows)
    price = median_price * ratio**AREA_EXPONENT * lot_factor * location * layout * noise
    return pd.DataFrame({
        "type": np.where(casa, "casa", "departamento"),
        "sector": world["name"].map(normalize_category).to_numpy(),
        "net_usable_area": usable, "net_area": total, "n_rooms": rooms, "n_bathroom": baths,
        "latitude": latitude, "longitude": longitude,
        TARGET.name: np.clip(price.round(), TARGET.minimum, TARGET.maximum).astype(np.int64),
    }, columns=list(COLUMNS)).astype({"type": "str", "sector": "str"})


def _price_zero(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    frame.loc[rows, "price"] = 0


def _price_under_1000(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    frame.loc[rows, "price"] = rng.integers(1, 1_000, len(rows))


def _zero_areas(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    frame.loc[rows, ["net_usable_area", "net_area"]] = 0.0


def _usable_over_total(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    usable = frame.loc[rows, "net_usable_area"].to_numpy()
    frame.loc[rows, "net_area"] = np.floor(usable * rng.uniform(0.4, 0.95, len(rows)))


def _absurd_areas(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    usable = np.exp(rng.uniform(np.log(6_000), np.log(180_116), len(rows))).round()
    total = np.minimum(usable * rng.uniform(1, 8, len(rows)), 1_430_000).round()
    frame.loc[rows, ["net_usable_area", "net_area"]] = np.column_stack([usable, total])


def _many_rooms(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    columns = rng.choice(["n_rooms", "n_bathroom"], len(rows))
    for row, column, count in zip(rows, columns, rng.integers(21, 56, len(rows)), strict=True):
        frame.loc[row, column] = float(count)


def _zero_bathrooms(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    frame.loc[rows, "n_bathroom"] = 0.0


def _swapped_coordinates(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    swapped = frame.loc[rows, ["longitude", "latitude"]].to_numpy()
    frame.loc[rows, ["latitude", "longitude"]] = swapped


def _far_coordinates(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    frame.loc[rows, ["latitude", "longitude"]] = np.array(FAR_PLACES)[
        rng.integers(0, len(FAR_PLACES), len(rows))]


def _duplicates(frame: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> None:
    """The first half of ``rows`` becomes exact copies of the second half."""
    copies, originals = np.split(rows, 2)
    for column in frame.columns:
        frame.loc[copies, column] = frame.loc[originals, column].to_numpy()


_DIRTIERS: dict[str, Callable[[pd.DataFrame, np.ndarray, np.random.Generator], None]] = {
    "price_zero": _price_zero, "price_under_1000": _price_under_1000, "zero_areas": _zero_areas,
    "usable_over_total": _usable_over_total, "absurd_areas": _absurd_areas,
    "many_rooms": _many_rooms, "zero_bathrooms": _zero_bathrooms,
    "swapped_coordinates": _swapped_coordinates, "far_coordinates": _far_coordinates,
    "duplicates": _duplicates,
}


def dirt_counts(n_rows: int) -> dict[str, int]:
    """Dirty rows of each kind for a frame of ``n_rows``: the client's counts, scaled.

    Every kind appears at least once from 2,000 rows up.
    """
    floor = 1 if n_rows >= 2_000 else 0
    return {kind: max(floor, round(count * n_rows / REFERENCE_ROWS))
            for kind, count in DIRT_COUNTS.items()}


def add_dirt(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A copy of ``frame`` with ``dirt_counts(len(frame))`` dirty rows, each kind on its own rows.

    Duplicates copy rows that carry no other dirt, so each kind's count can be checked alone.
    """
    dirty = frame.reset_index(drop=True)
    order = rng.permutation(len(dirty))
    start = 0
    for kind, count in dirt_counts(len(dirty)).items():
        width = 2 * count if kind == "duplicates" else count
        _DIRTIERS[kind](dirty, order[start:start + width], rng)
        start += width
    logger.debug("added %d dirty rows to %d listings", start, len(dirty))
    return dirty


def generate_listings(n_rows: int, seed: int, dirty: bool = True) -> pd.DataFrame:
    """``n_rows`` synthetic listings in the client's columns; the same seed gives the same frame.

    With ``dirty=False`` every row is inside the schema's bounds and no row is repeated.
    """
    if n_rows <= 0:
        raise ValueError(f"n_rows must be > 0 (got {n_rows})")
    clean_stream, dirt_stream = np.random.SeedSequence(seed).spawn(2)
    frame = _clean_listings(n_rows, np.random.default_rng(clean_stream))
    return add_dirt(frame, np.random.default_rng(dirt_stream)) if dirty else frame


def generate_splits(seed: int = 42, train_rows: int = 16_212, test_rows: int = 6_949,
                    dirty: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test frames drawn independently from the same world, from sub-streams of seed."""
    train_seed, test_seed = (int(child.generate_state(1)[0])
                             for child in np.random.SeedSequence(seed).spawn(2))
    return (generate_listings(train_rows, train_seed, dirty),
            generate_listings(test_rows, test_seed, dirty))


def _check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            make_url(value).get_dialect()
        except ArgumentError as exc:
            raise click.BadParameter(f"not a usable SQLAlchemy URL ({exc})") from None
    return value


def _write_tables(frames: dict[str, pd.DataFrame], url: str) -> None:
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        with create_engine(url).begin() as connection:
            for name, frame in frames.items():
                frame.to_sql(name, connection, if_exists="replace", index=False)
    except (SQLAlchemyError, ImportError) as exc:
        raise click.ClickException(f"cannot write to {shown}: {exc}") from None
    for name, frame in frames.items():
        click.echo(f"wrote {len(frame)} rows to table {name} at {shown}")


def _write_csvs(frames: dict[str, pd.DataFrame], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        click.echo(f"wrote {len(frame)} rows to {path}")


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
              show_default=True, help="Folder for train.csv and test.csv.")
@click.option("--url", callback=_check_url,
              help="SQLAlchemy URL: write tables train and test there instead of CSV files.")
@click.option("--seed", type=click.IntRange(min=0), default=42, show_default=True,
              help="Same seed, same files.")
@click.option("--train-rows", type=click.IntRange(min=1), default=16_212, show_default=True)
@click.option("--test-rows", type=click.IntRange(min=1), default=6_949, show_default=True)
@click.option("--dirty/--clean", default=True, show_default=True,
              help="Add the dirty rows seen in the client's files.")
def main(out: Path, url: str | None, seed: int, train_rows: int, test_rows: int,
         dirty: bool) -> None:
    """Write synthetic train and test listings as CSV files or database tables."""
    train, test = generate_splits(seed, train_rows, test_rows, dirty)
    frames = {"train": train, "test": test}
    if url:
        _write_tables(frames, url)
    else:
        _write_csvs(frames, out)


if __name__ == "__main__":
    main()
