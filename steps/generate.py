"""Generate realistic synthetic listings in the client's schema, dirty rows included.

Reads nothing. Writes ``train.csv`` and ``test.csv`` to a folder, or tables ``train`` and
``test`` to any SQLAlchemy URL. ``WORLD`` and ``DIRT_COUNTS`` reproduce the aggregates known of
the client's private files (CHALLENGE.md); ``VARIANTS`` are named worlds that change what a
model must learn. A price is usable area times a UF/m² made of the group's median, a smooth
spatial surface, a building's effect (its units share coordinates) and the unit's own part.
Train and test are split from one pool of listings, so a building can have units in both.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from pyfunc.schema import FEATURE_NAMES, TARGET

logger = logging.getLogger(__name__)

# One row per sector and type, casa then departamento: the client's figures (CHALLENGE.md).
# rows: listings in train.csv; lat/lon: centre of the listings and their spread (degrees);
# usable: median usable area (m²); uf_m2: median UF per m² of usable area; lot: median
# net_area of houses (m²); spread: sd of log(UF/m²) within the group.
WORLD = pd.DataFrame(
    [
        ("las condes", "casa", 1972, -33.410, -70.560, 0.014, 0.022, 220, 84, 600, 0.28),
        ("las condes", "departamento", 3662, -33.410, -70.560, 0.014, 0.022, 118, 88, 0, 0.26),
        ("vitacura", "casa", 1306, -33.385, -70.580, 0.010, 0.016, 230, 96, 800, 0.30),
        ("vitacura", "departamento", 1596, -33.385, -70.580, 0.010, 0.016, 140, 92, 0, 0.35),
        ("lo barnechea", "casa", 1733, -33.352, -70.515, 0.012, 0.024, 308, 81, 956, 0.34),
        ("lo barnechea", "departamento", 1155, -33.352, -70.515, 0.012, 0.024, 140, 91, 0, 0.37),
        ("nunoa", "casa", 577, -33.457, -70.600, 0.010, 0.012, 163, 71, 300, 0.25),
        ("nunoa", "departamento", 1347, -33.457, -70.600, 0.010, 0.012, 72, 73, 0, 0.22),
        ("providencia", "casa", 370, -33.430, -70.612, 0.008, 0.011, 181, 85, 320, 0.27),
        ("providencia", "departamento", 1479, -33.430, -70.612, 0.008, 0.011, 83, 86, 0, 0.23),
        ("la reina", "casa", 660, -33.445, -70.545, 0.010, 0.014, 176, 75, 550, 0.31),
        ("la reina", "departamento", 355, -33.445, -70.545, 0.010, 0.014, 99, 78, 0, 0.46),
    ],
    columns=[
        "sector",
        "type",
        "rows",
        "lat",
        "lon",
        "lat_sd",
        "lon_sd",
        "usable",
        "uf_m2",
        "lot",
        "spread",
    ],
)
LATITUDE_RANGE = (-33.52, -33.31)  # every clean listing lies in this box
LONGITUDE_RANGE = (-70.64, -70.43)
# The micro-location surface belongs to the world, not to a sample: the same for every seed.
WORLD_SEED = 20_240_601
SURFACE_WAVES = 128  # random Fourier features of a smooth Gaussian field


@dataclass(frozen=True)
class Variant:
    """The knobs a named world turns; shares split the variance of log(UF/m²) in a group."""

    spread: float = 1.0  # multiplies WORLD.spread
    location_share: float = 0.45  # smooth surface over the map (length_scale wide)
    building_share: float = 0.45  # one effect shared by a building's units
    length_scale: float = 0.01  # degrees, about 1 km
    building_rate: float = 0.17  # share of sites that are multi-unit buildings
    units_per_building: float = 3.0  # mean units of a multi-unit building
    same_type: float = 0.95  # share of a building's units of the building's type
    same_plan: float = 0.9  # share of a building's units repeating a floor plan
    area_sd: float = 0.42  # sd of log usable area in a group
    area_skew: float = 0.18  # a heavier upper tail of areas, and so of prices


VARIANTS: dict[str, Variant] = {
    "realistic": Variant(),
    "noisy": Variant(spread=1.4, location_share=0.25, building_share=0.25, same_plan=0.5),
    "local": Variant(location_share=0.5, building_share=0.5, length_scale=0.004),
    "buildings": Variant(building_rate=0.3, units_per_building=5.0),
    "smooth": Variant(spread=0.45, building_rate=0.0),
}
AREA_EXPONENT = -0.1  # UF/m² falls a little as the area grows
LOT_EXPONENT = 0.12  # houses: price elasticity to the lot
OTHER_VARIANCE = 0.005  # of log(UF/m²) from area, lot and layout, taken off a unit's own part
REFERENCE_ROWS = 16_212  # rows of the client's train.csv, the scale of DIRT_COUNTS
DIRT_COUNTS: dict[str, int] = {
    "price_zero": 1,
    "price_under_1000": 19,
    "zero_areas": 32,
    "zero_net_area": 4,
    "usable_over_total": 170,
    "absurd_areas": 10,
    "many_rooms": 10,
    "zero_bathrooms": 131,
    "swapped_coordinates": 15,
    "far_coordinates": 10,
    "duplicates": 22,
}
FAR_PLACES = ((0.0, 0.0), (-36.827, -73.050), (-23.650, -70.400), (-41.469, -72.942))

COLUMNS: tuple[str, ...] = (*FEATURE_NAMES, TARGET.name)


def _surface(lat: np.ndarray, lon: np.ndarray, length_scale: float) -> np.ndarray:
    """A smooth field of unit variance over the map (random Fourier features of WORLD_SEED)."""
    world = np.random.default_rng(WORLD_SEED)
    waves = world.standard_normal((2, SURFACE_WAVES)) / length_scale
    phases = world.uniform(0.0, 2 * np.pi, SURFACE_WAVES)
    places = np.column_stack([lat, lon * np.cos(np.radians(33.4))])
    return np.sqrt(2 / SURFACE_WAVES) * np.cos(places @ waves + phases).sum(axis=1)


@cache
def _surface_scale(length_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the surface over each group's area: it moves no group's median or spread."""
    z_lat, z_lon = np.random.default_rng(WORLD_SEED).standard_normal((2, 1, 1_000))
    lat = WORLD["lat"].to_numpy()[:, None] + z_lat * WORLD["lat_sd"].to_numpy()[:, None]
    lon = WORLD["lon"].to_numpy()[:, None] + z_lon * WORLD["lon_sd"].to_numpy()[:, None]
    surface = _surface(lat.ravel(), lon.ravel(), length_scale).reshape(len(WORLD), -1)
    return surface.mean(axis=1), surface.std(axis=1)


def _sites(n_rows: int, variant: Variant, rng: np.random.Generator) -> pd.DataFrame:
    """One row per unit: its site's group, coordinates and shared effects (a building or not)."""
    building = rng.random(n_rows) < variant.building_rate
    extra_units = rng.geometric(1 / max(variant.units_per_building - 1, 1), n_rows)
    site = np.repeat(np.arange(n_rows), np.where(building, 1 + extra_units, 1))[:n_rows]
    n_sites = site[-1] + 1
    group = rng.choice(len(WORLD), size=n_sites, p=WORLD["rows"] / WORLD["rows"].sum())
    where, building = WORLD.iloc[group], building[:n_sites]
    lat, lon = (
        np.clip(where[name] + rng.standard_normal(n_sites) * where[f"{name}_sd"], *box).to_numpy()
        for name, box in (("lat", LATITUDE_RANGE), ("lon", LONGITUDE_RANGE))
    )
    mean, sd = (values[group] for values in _surface_scale(variant.length_scale))
    sites = pd.DataFrame(
        {
            "site": np.arange(n_sites),
            "group": group,
            "latitude": np.where(building, lat.round(4), lat.round(6)),
            "longitude": np.where(building, lon.round(4), lon.round(6)),
            "location": (_surface(lat, lon, variant.length_scale) - mean) / sd,
            "building": rng.standard_normal(n_sites),
            "size": rng.standard_normal(n_sites),
        }
    )
    return sites.iloc[site].reset_index(drop=True)


def _unit_groups(sites: pd.DataFrame, variant: Variant, rng: np.random.Generator) -> np.ndarray:
    """Each unit's row of WORLD: its site's, or (a few units) a type drawn in the same sector."""
    casa, flat = WORLD["rows"].iloc[::2].to_numpy(), WORLD["rows"].iloc[1::2].to_numpy()
    sector, casa_share = sites["group"].to_numpy() // 2, casa / (casa + flat)
    drawn = 2 * sector + (rng.random(len(sites)) >= casa_share[sector])
    return np.where(rng.random(len(sites)) < variant.same_type, sites["group"], drawn)


def _total_area(
    usable: np.ndarray, group: pd.DataFrame, casa: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """net_area (the lot of a house, usable plus terraces for a flat) and the lot's log effect."""
    typical_lot = group["lot"].to_numpy() * (usable / group["usable"].to_numpy()) ** 0.5
    house_lot = typical_lot * rng.lognormal(0.0, 0.35, len(usable))
    flat_total = usable * (1.0 + rng.lognormal(np.log(0.12), 0.5, len(usable)))
    total = np.where(casa, np.clip(house_lot, usable * 1.1, 50_000), flat_total).round()
    return total, LOT_EXPONENT * np.log(total / np.where(casa, typical_lot, total))


def _rooms(
    usable: np.ndarray, casa: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rooms and bathrooms growing with area, and their small log effect on price."""
    expected_rooms = np.where(casa, 1.5 + usable / 70, 0.6 + usable / 45)
    expected_baths = np.where(casa, 0.6 + usable / 75, 0.3 + usable / 60)
    rooms = np.clip((expected_rooms + rng.normal(0, 0.7, len(usable))).round(), 1, 12)
    baths = np.clip((expected_baths + rng.normal(0, 0.6, len(usable))).round(), 1, 10)
    return rooms, baths, 0.04 * (baths - expected_baths) - 0.02 * (rooms - expected_rooms)


def _clean_listings(n_rows: int, variant: Variant, rng: np.random.Generator) -> pd.DataFrame:
    """Listings drawn from the synthetic world, all inside the schema's bounds, none repeated."""
    sites = _sites(n_rows, variant, rng)
    groups = _unit_groups(sites, variant, rng)
    group = WORLD.iloc[groups].reset_index(drop=True)
    casa = (group["type"] == "casa").to_numpy()
    size = np.sqrt(0.4) * sites["size"] + np.sqrt(0.6) * rng.standard_normal(n_rows)
    size += variant.area_skew * (size**2 - 0.5)  # a heavier upper tail
    usable = np.clip(group["usable"] * np.exp(variant.area_sd * size), 20, 3_000).round()
    total, lot_effect = _total_area(usable.to_numpy(), group, casa, rng)
    rooms, baths, layout = _rooms(usable.to_numpy(), casa, rng)
    # Units of a building often repeat a floor plan: the first unit's of their type.
    first = pd.Series(np.arange(n_rows)).groupby([sites["site"], groups]).transform("first")
    plan = np.where(rng.random(n_rows) < variant.same_plan, first, np.arange(n_rows))
    usable, total, rooms, baths, lot_effect, layout = (
        np.asarray(values)[plan] for values in (usable, total, rooms, baths, lot_effect, layout)
    )
    spread = variant.spread * group["spread"]
    own_share = 1 - variant.location_share - variant.building_share
    own_sd = np.sqrt(np.clip(own_share * spread**2 - OTHER_VARIANCE, 0, None))
    effects = spread * (
        np.sqrt(variant.location_share) * sites["location"]
        + np.sqrt(variant.building_share) * sites["building"]
    )
    log_uf_m2 = (
        np.log(group["uf_m2"])
        + effects
        + own_sd * rng.standard_normal(n_rows)
        + AREA_EXPONENT * np.log(usable / group["usable"])
        + lot_effect
        + layout
    )
    price = np.clip(np.exp(log_uf_m2) * usable, TARGET.minimum, TARGET.maximum).round()
    frame = pd.DataFrame(
        {
            "type": group["type"],
            "sector": group["sector"],
            "net_usable_area": usable,
            "net_area": total,
            "n_rooms": rooms,
            "n_bathroom": baths,
            "latitude": sites["latitude"],
            "longitude": sites["longitude"],
            TARGET.name: price.astype(np.int64),
        },
        columns=list(COLUMNS),
    )
    frame = frame.iloc[rng.permutation(n_rows)].reset_index(drop=True)
    frame[TARGET.name] += frame.groupby(list(COLUMNS)).cumcount()  # no unit listed twice
    return frame.astype({"type": "str", "sector": "str"})


def _many_rooms(rows: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """n_rooms or n_bathroom (one of them per row) becomes 21 to 55."""
    count, rooms = rng.integers(21, 56, len(rows)).astype(float), rng.random(len(rows)) < 0.5
    return np.column_stack(
        [np.where(rooms, count, rows["n_rooms"]), np.where(rooms, rows["n_bathroom"], count)]
    )


def _absurd_areas(rows: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    usable = np.exp(rng.uniform(np.log(6_000), np.log(180_116), len(rows))).round()
    total = np.minimum(usable * rng.uniform(1, 8, len(rows)), 1_430_000).round()
    return np.column_stack([usable, total])


AREAS, PLACE = ["net_usable_area", "net_area"], ["latitude", "longitude"]
# Each kind of dirt: the columns it overwrites and their new values for the rows it picks.
_DIRT: dict[str, tuple[list[str], Callable[[pd.DataFrame, np.random.Generator], object]]] = {
    "price_zero": ([TARGET.name], lambda rows, rng: 0),
    "price_under_1000": ([TARGET.name], lambda rows, rng: rng.integers(1, 1_000, len(rows))),
    "zero_areas": (AREAS, lambda rows, rng: 0.0),
    "zero_net_area": (["net_area"], lambda rows, rng: 0.0),
    "usable_over_total": (
        ["net_area"],
        lambda rows, rng: np.floor(rows["net_usable_area"] * rng.uniform(0.4, 0.95, len(rows))),
    ),
    "absurd_areas": (AREAS, _absurd_areas),
    "many_rooms": (["n_rooms", "n_bathroom"], _many_rooms),
    "zero_bathrooms": (["n_bathroom"], lambda rows, rng: 0.0),
    "swapped_coordinates": (PLACE, lambda rows, rng: rows[PLACE[::-1]].to_numpy()),
    "far_coordinates": (
        PLACE,
        lambda rows, rng: np.array(FAR_PLACES)[rng.integers(0, len(FAR_PLACES), len(rows))],
    ),
}


def dirt_counts(n_rows: int) -> dict[str, int]:
    """Dirty rows of each kind for a frame of ``n_rows``: the client's counts, scaled."""
    floor = 1 if n_rows >= 2_000 else 0
    return {
        kind: max(floor, round(count * n_rows / REFERENCE_ROWS))
        for kind, count in DIRT_COUNTS.items()
    }


def add_dirt(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A copy of ``frame`` with ``dirt_counts(len(frame))`` dirty rows, each kind on its own rows.

    Duplicates copy rows that carry no other dirt, so each kind's count can be checked alone.
    """
    dirty = frame.reset_index(drop=True)
    order = rng.permutation(len(dirty))
    start = 0
    for kind, count in dirt_counts(len(dirty)).items():
        rows, start = order[start : start + count], start + count
        if kind == "duplicates":  # copies of as many rows further on
            originals, start = order[start : start + count], start + count
            dirty.loc[rows] = dirty.loc[originals].set_axis(rows)
        elif count:
            columns, values = _DIRT[kind]
            dirty.loc[rows, columns] = values(dirty.loc[rows], rng)
    logger.debug("added %d dirty rows to %d listings", start, len(dirty))
    return dirty


def generate_splits(
    seed: int = 42,
    train_rows: int = 16_212,
    test_rows: int = 6_949,
    dirty: bool = True,
    variant: str = "realistic",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test frames split at random from one pool of listings of the named variant.

    The same seed gives the same frames; with ``dirty=False`` every row is inside the schema's
    bounds and no row is repeated.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    pool_rng, *dirt_rngs = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(3))
    pool = _clean_listings(train_rows + test_rows, VARIANTS[variant], pool_rng)
    splits = (pool.iloc[:train_rows], pool.iloc[train_rows:])
    return tuple(
        add_dirt(split, rng) if dirty else split.reset_index(drop=True)
        for split, rng in zip(splits, dirt_rngs, strict=True)
    )


def generate_listings(
    n_rows: int, seed: int, dirty: bool = True, variant: str = "realistic"
) -> pd.DataFrame:
    """``n_rows`` synthetic listings in the client's columns (the train split of a seed)."""
    if n_rows <= 0:
        raise ValueError(f"n_rows must be > 0 (got {n_rows})")
    return generate_splits(seed, n_rows, 0, dirty, variant)[0]


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


@click.command(context_settings={"show_default": True})
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    help="Folder for train.csv and test.csv.",
)
@click.option(
    "--url",
    callback=_check_url,
    help="SQLAlchemy URL: write tables train and test there instead of CSV files.",
)
@click.option("--seed", type=click.IntRange(min=0), default=42, help="Same seed, same files.")
@click.option("--train-rows", type=click.IntRange(min=1), default=16_212)
@click.option("--test-rows", type=click.IntRange(min=1), default=6_949)
@click.option(
    "--variant",
    type=click.Choice(list(VARIANTS)),
    default="realistic",
    help="Synthetic world: realistic (the client's market) or one "
    "that changes what a model must learn.",
)
@click.option(
    "--dirty/--clean", default=True, help="Add the dirty rows seen in the client's files."
)
def main(out: Path, url: str | None, **options: Any) -> None:
    """Write synthetic train and test listings as CSV files or database tables."""
    # seed, train_rows, test_rows, variant, dirty: generate_splits' parameters
    frames = dict(zip(("train", "test"), generate_splits(**options), strict=True))
    if url:
        _write_tables(frames, url)
    else:
        _write_csvs(frames, out)


if __name__ == "__main__":
    main()
