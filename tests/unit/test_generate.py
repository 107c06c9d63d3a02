"""Behaviour of the synthetic data generator: determinism, realism, variants, dirt and its CLI.

The realism figures are CHALLENGE.md's aggregates of the client's files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.spatial import cKDTree
from sklearn.ensemble import HistGradientBoostingRegressor
from sqlalchemy import create_engine, inspect
from threadpoolctl import threadpool_limits

from pyfunc.schema import NUMERIC_FEATURES, TARGET, normalize_category
from steps.generate import VARIANTS, dirt_counts, generate_listings, generate_splits, main

CLIENT_COLUMNS = [
    "type",
    "sector",
    "net_usable_area",
    "net_area",
    "n_rooms",
    "n_bathroom",
    "latitude",
    "longitude",
    "price",
]
# CHALLENGE.md: train rows by sector and median price (casa, departamento) by sector.
SECTOR_ROWS = {
    "las condes": 5634,
    "vitacura": 2902,
    "lo barnechea": 2888,
    "nunoa": 1924,
    "providencia": 1849,
    "la reina": 1015,
}
MEDIAN_PRICE = {
    "la reina": (13_200, 7_725),
    "las condes": (18_500, 10_346),
    "lo barnechea": (25_000, 13_200),
    "nunoa": (11_592, 5_227),
    "providencia": (15_400, 7_167),
    "vitacura": (22_000, 13_100),
}
LATITUDE_BOX, LONGITUDE_BOX = (-33.52, -33.31), (-70.64, -70.43)
# sd of log(UF per m² usable) within a sector and type; median UF/m² and usable area (m²).
APARTMENT_SPREAD = {
    "la reina": 0.46,
    "lo barnechea": 0.37,
    "vitacura": 0.35,
    "providencia": 0.23,
    "nunoa": 0.22,
}
MEDIAN_UF_M2 = {
    ("nunoa", "casa"): 70,
    ("vitacura", "casa"): 96,
    ("nunoa", "departamento"): 73,
    ("vitacura", "departamento"): 92,
}
MEDIAN_USABLE = {
    ("nunoa", "departamento"): 73,
    ("vitacura", "departamento"): 140,
    ("lo barnechea", "departamento"): 140,
    ("nunoa", "casa"): 160,
    ("lo barnechea", "casa"): 308,
}
PLACE = ["latitude", "longitude"]


def _outside_box(frame: pd.DataFrame) -> pd.Series:
    return ~(frame["latitude"].between(*LATITUDE_BOX) & frame["longitude"].between(*LONGITUDE_BOX))


DETECTORS = {
    "price_zero": lambda f: f["price"] == 0,
    "price_under_1000": lambda f: f["price"].between(1, 999),
    "zero_areas": lambda f: (f["net_usable_area"] == 0) & (f["net_area"] == 0),
    "zero_net_area": lambda f: (f["net_usable_area"] > 0) & (f["net_area"] == 0),
    "usable_over_total": lambda f: f["net_usable_area"] > f["net_area"].where(f["net_area"] > 0),
    "absurd_areas": lambda f: (f["net_usable_area"] > 5_000) | (f["net_area"] > 200_000),
    "many_rooms": lambda f: f[["n_rooms", "n_bathroom"]].max(axis=1).between(21, 55),
    "zero_bathrooms": lambda f: f["n_bathroom"] == 0,
    "swapped_coordinates": lambda f: (
        f["latitude"].between(-71, -70) & f["longitude"].between(-34, -33)
    ),
    "far_coordinates": lambda f: _outside_box(f) & (f["latitude"] > -60),
    "duplicates": lambda f: f.duplicated(),
}


def _shared_coordinates(frame: pd.DataFrame) -> float:
    """Share of listings whose exact coordinates (4 decimals) another listing has too."""
    return float(frame[PLACE].round(4).duplicated(keep=False).mean())


def _log_uf_m2_spread(frame: pd.DataFrame) -> pd.Series:
    """sd of log(UF/m²) per (sector, type), and the pooled one under key "all"."""
    groups = np.log(frame["price"] / frame["net_usable_area"]).groupby(
        [frame["sector"], frame["type"]]
    )
    pooled = np.sqrt((groups.var() * (groups.size() - 1)).sum() / (len(frame) - groups.ngroups))
    return pd.concat([groups.std(), pd.Series({("all", "all"): pooled})])


@pytest.fixture(scope="module")
def splits() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_splits(3, dirty=False)


@pytest.fixture(scope="module")
def clean(splits: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    return splits[0]


@pytest.fixture(scope="module")
def variants() -> dict[str, pd.DataFrame]:
    return {name: generate_listings(8_000, seed=5, dirty=False, variant=name) for name in VARIANTS}


@pytest.fixture(scope="module", params=[16_212, 5_000])
def dirty(request: pytest.FixtureRequest) -> pd.DataFrame:
    return generate_listings(request.param, seed=4)


def test_same_seed_gives_identical_frames() -> None:
    pd.testing.assert_frame_equal(generate_listings(2_000, 7), generate_listings(2_000, 7))
    pd.testing.assert_frame_equal(
        generate_listings(500, 7, variant="noisy"), generate_listings(500, 7, variant="noisy")
    )
    for first, again in zip(
        generate_splits(7, 1_000, 500), generate_splits(7, 1_000, 500), strict=True
    ):
        pd.testing.assert_frame_equal(first, again)


def test_different_seeds_splits_and_variants_differ() -> None:
    assert not generate_listings(500, 1).equals(generate_listings(500, 2))
    assert not generate_listings(500, 1).equals(generate_listings(500, 1, variant="local"))
    train, test = generate_splits(1, 500, 500)
    assert not train.equals(test)


def test_columns_and_dtypes(clean: pd.DataFrame) -> None:
    assert list(clean.columns) == CLIENT_COLUMNS
    for column in ("type", "sector"):
        assert pd.api.types.is_string_dtype(clean[column])
        assert (clean[column] == clean[column].map(normalize_category)).all()
    assert set(clean["type"]) == {"casa", "departamento"}
    assert (clean.dtypes[CLIENT_COLUMNS[2:-1]] == np.float64).all()
    assert clean["price"].dtype == np.int64


def test_rejects_non_positive_rows() -> None:
    with pytest.raises(ValueError, match=r"n_rows must be > 0 \(got 0\)"):
        generate_listings(0, 1)


def test_clean_rows_inside_schema_bounds_and_santiago(clean: pd.DataFrame) -> None:
    for feature in (*NUMERIC_FEATURES, TARGET):
        assert clean[feature.name].between(feature.minimum, feature.maximum).all(), feature.name
    assert not _outside_box(clean).any()
    assert (clean["net_usable_area"] <= clean["net_area"]).all()
    assert not clean.duplicated().any()


def test_sector_and_type_shares(clean: pd.DataFrame) -> None:
    shares = clean["sector"].value_counts(normalize=True)
    expected = pd.Series(SECTOR_ROWS) / sum(SECTOR_ROWS.values())
    assert set(shares.index) == set(expected.index)
    assert (shares - expected).abs().max() < 0.02
    assert abs((clean["type"] == "departamento").mean() - 0.59) < 0.03
    casa_share = clean["type"].eq("casa").groupby(clean["sector"]).mean()
    assert casa_share["lo barnechea"] > casa_share["providencia"]


def test_median_price_by_sector_and_type(clean: pd.DataFrame) -> None:
    medians = clean.groupby(["sector", "type"])["price"].median()
    for sector, (casa, departamento) in MEDIAN_PRICE.items():
        assert medians[sector, "casa"] == pytest.approx(casa, rel=0.15)
        assert medians[sector, "departamento"] == pytest.approx(departamento, rel=0.15)


def test_price_percentiles_and_a_heavy_upper_tail(clean: pd.DataFrame) -> None:
    prices = clean["price"]
    assert prices.quantile(0.01) == pytest.approx(3_300, rel=0.06)
    assert prices.median() == pytest.approx(12_500, rel=0.06)
    assert prices.quantile(0.99) == pytest.approx(64_000, rel=0.07)
    assert prices.max() > 2 * prices.quantile(0.99)


def test_uf_per_m2_areas_and_rooms_are_realistic(clean: pd.DataFrame) -> None:
    uf_m2 = clean["price"] / clean["net_usable_area"]
    assert uf_m2.median() == pytest.approx(83, rel=0.05)
    by_group = clean.assign(uf_m2=uf_m2).groupby(["sector", "type"])
    for group, expected in MEDIAN_UF_M2.items():
        assert by_group["uf_m2"].median()[group] == pytest.approx(expected, rel=0.08), group
    for group, expected in MEDIAN_USABLE.items():
        assert by_group["net_usable_area"].median()[group] == pytest.approx(expected, rel=0.1)
    lots = clean.groupby(["type", "sector"])["net_area"].median()
    assert lots["casa"].between(270, 1_050).all()
    assert lots["departamento"].between(70, 190).all()
    for column in ("n_rooms", "n_bathroom"):
        assert clean["net_usable_area"].corr(clean[column], method="spearman") > 0.5


def test_spread_of_log_uf_m2_within_sector_and_type(clean: pd.DataFrame) -> None:
    spread = _log_uf_m2_spread(clean)
    assert spread["all", "all"] == pytest.approx(0.29, abs=0.02)
    for sector, expected in APARTMENT_SPREAD.items():
        assert spread[sector, "departamento"] == pytest.approx(expected, abs=0.04), sector
    assert spread.xs("casa", level=1).between(0.22, 0.37).all()
    assert spread["la reina", "departamento"] > spread["nunoa", "departamento"] + 0.15


def test_a_third_of_listings_are_units_of_buildings(clean: pd.DataFrame) -> None:
    assert _shared_coordinates(clean) == pytest.approx(1 / 3, abs=0.04)
    buildings = clean[clean[PLACE].duplicated(keep=False)].groupby(PLACE)
    units = buildings.size()
    assert (buildings["sector"].nunique() == 1).mean() > 0.98
    main_type = clean.groupby([*PLACE, "type"]).size().groupby(level=PLACE).max()
    assert main_type[units.index].sum() > 0.9 * units.sum()
    assert (buildings["price"].nunique() == units).mean() > 0.95  # floor, condition
    assert (buildings["net_usable_area"].nunique() < units).mean() > 0.5  # floor plans repeat


def test_test_split_shares_buildings_with_train(splits: tuple[pd.DataFrame, ...]) -> None:
    train, test = (pd.MultiIndex.from_frame(split[PLACE]) for split in splits)
    assert test.isin(train).mean() > 0.2


def _neighbour_correlation(frame: pd.DataFrame) -> float:
    """Correlation of a site's log(UF/m²) residual with its nearest other site's."""
    log_uf_m2 = np.log(frame["price"] / frame["net_usable_area"])
    residual = log_uf_m2 - log_uf_m2.groupby([frame["sector"], frame["type"]]).transform("median")
    sites = residual.groupby([frame["latitude"], frame["longitude"]]).mean()
    _, nearest = cKDTree(np.array(sites.index.tolist())).query(sites.index.tolist(), k=2)
    return float(np.corrcoef(sites.to_numpy(), sites.to_numpy()[nearest[:, 1]])[0, 1])


def _within_building_spread(frame: pd.DataFrame) -> float:
    log_uf_m2 = np.log(frame["price"] / frame["net_usable_area"])
    buildings = log_uf_m2.groupby([frame["latitude"], frame["longitude"]])
    return float((log_uf_m2 - buildings.transform("mean"))[buildings.transform("size") > 1].std())


def test_variants_change_the_world_in_their_direction(variants: dict[str, pd.DataFrame]) -> None:
    spread = {name: _log_uf_m2_spread(frame)["all", "all"] for name, frame in variants.items()}
    shared = {name: _shared_coordinates(frame) for name, frame in variants.items()}
    realistic = variants["realistic"]
    assert spread["noisy"] > spread["realistic"] + 0.08
    assert shared["buildings"] > shared["realistic"] + 0.2
    assert spread["smooth"] < 0.16 and shared["smooth"] < 0.05
    assert _neighbour_correlation(realistic) > 0.2
    assert _neighbour_correlation(variants["local"]) > _neighbour_correlation(realistic) + 0.08
    assert _within_building_spread(variants["local"]) < 0.7 * _within_building_spread(realistic)
    for frame in variants.values():
        assert frame["price"].median() == pytest.approx(realistic["price"].median(), rel=0.08)


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match="unknown variant 'calm'; allowed: realistic, noisy, local, buildings, smooth",
    ):
        generate_listings(100, 1, variant="calm")


def test_dirt_counts_scale_from_the_client_file() -> None:
    assert dirt_counts(16_212) == {
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
    assert min(dirt_counts(2_000).values()) == 1
    assert dirt_counts(8_106)["usable_over_total"] == 85


def test_zero_bathrooms_and_zero_net_area_as_often_as_in_the_client_file(
    dirty: pd.DataFrame,
) -> None:
    assert (dirty["n_bathroom"] == 0).mean() == pytest.approx(0.008, abs=0.0005)
    assert (dirty["net_area"] == 0).mean() == pytest.approx(0.002, abs=0.0005)


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_each_kind_of_dirt_has_its_scaled_count(dirty: pd.DataFrame, kind: str) -> None:
    assert int(DETECTORS[kind](dirty).sum()) == dirt_counts(len(dirty))[kind]


def test_dirt_touches_only_its_own_rows() -> None:
    clean, dirty = generate_listings(5_000, 9, dirty=False), generate_listings(5_000, 9)
    changed = (clean != dirty).any(axis=1).sum()
    assert changed == sum(dirt_counts(5_000).values())
    assert dirty.notna().all().all()


def test_cli_writes_csvs_equal_to_generate_splits(tmp_path) -> None:
    out = tmp_path / "data"
    result = CliRunner().invoke(
        main, ["--out", str(out), "--seed", "5", "--train-rows", "2000", "--test-rows", "800"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 2
    for name, expected in zip(("train", "test"), generate_splits(5, 2_000, 800), strict=True):
        pd.testing.assert_frame_equal(pd.read_csv(out / f"{name}.csv"), expected)


def test_cli_writes_the_named_variant(tmp_path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "--out",
            str(tmp_path),
            "--seed",
            "5",
            "--train-rows",
            "500",
            "--test-rows",
            "200",
            "--variant",
            "buildings",
        ],
    )
    assert result.exit_code == 0, result.output
    expected = generate_splits(5, 500, 200, variant="buildings")[0]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "train.csv"), expected)


def test_cli_writes_tables_to_a_database_url_and_replaces_them(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'listings.db'}"
    arguments = ["--url", url, "--train-rows", "300", "--test-rows", "100"]
    for _ in range(2):
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 0, result.output
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) == {"train", "test"}
    train = pd.read_sql_table("train", engine)
    engine.dispose()
    assert list(train.columns) == CLIENT_COLUMNS
    assert len(train) == 300


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--train-rows", "0"], "--train-rows"),
        (["--test-rows", "-3"], "--test-rows"),
        (["--url", "not a url"], "--url"),
        (["--variant", "calm"], "--variant"),
    ],
)
def test_cli_rejects_bad_arguments_with_a_usage_error(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def _encoded(frame: pd.DataFrame) -> pd.DataFrame:
    features = frame.drop(columns="price")
    return features.astype({"type": "category", "sector": "category"})


def test_price_is_learnable_from_the_numeric_features() -> None:
    train, test = generate_splits(11, 3_000, 1_500, dirty=False)
    model = HistGradientBoostingRegressor(
        max_iter=40, random_state=0, categorical_features="from_dtype"
    )
    with threadpool_limits(1):  # threads only wait for each other on a busy machine
        model.fit(_encoded(train), train["price"])
        model_mae = np.abs(model.predict(_encoded(test)) - test["price"]).mean()
    medians = train.groupby(["sector", "type"])["price"].median().rename("median")
    baseline_mae = test.join(medians, on=["sector", "type"]).eval("abs(price - median)").mean()
    assert model_mae < 0.6 * baseline_mae
