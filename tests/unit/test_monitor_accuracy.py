"""Live accuracy: the join of valuations to realized prices in a real SQLite store, and the
figures per version and sector against a direct computation on the same rows."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from config.settings import Settings
from gateway import outcomes
from gateway.store import Store, prediction_rows
from steps import monitor
from steps.monitor import accuracy_table, gauge_rows
from steps.prediction_store import connect, joined_outcomes, metadata, publish

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
# (request id, version, sector, predicted, low, high, realized or None, valued at)
VALUATIONS = [
    ("a", "3", "vitacura", 10_000, 8_000, 12_000, 11_000, "2026-11-02T10:00:00.000Z"),
    ("b", "3", "vitacura", 20_000, 16_000, 24_000, 15_000, "2026-11-03T10:00:00.000Z"),
    ("c", "3", "nunoa", 5_000, 4_000, 6_000, 5_500, "2026-11-04T10:00:00.000Z"),
    ("d", "4", "nunoa", 6_000, 5_000, 7_000, 4_000, "2026-11-05T10:00:00.000Z"),
    ("e", "4", "nunoa", 7_000, 6_000, 8_000, None, "2026-11-06T10:00:00.000Z"),  # no outcome
    ("f", "4", "nunoa", 9_000, 8_000, 9_500, 9_000, "2026-10-31T23:59:59.999Z"),  # before
    ("g", "4", "nunoa", 9_000, 8_000, 9_500, 9_000, "2026-12-01T00:00:00.000Z"),  # at the end
]


@pytest.fixture
def store(tmp_path) -> sa.Engine:
    """The gateway's store with VALUATIONS and their outcomes; the monitor's engine on it."""
    store = Store(f"sqlite:///{tmp_path}/p.db")
    for request_id, version, sector, price, low, high, realized, at in VALUATIONS:
        rows = prediction_rows(
            request_id, "k", at, version, [sector], None,
            [{"price": price, "price_low": low, "price_high": high}],
        )  # fmt: skip
        store.run(
            lambda execute, rows=rows: execute(
                "INSERT INTO predictions VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows,
                many=True,
            )
        )  # fmt: skip
        if realized is not None:
            store.run(
                lambda execute, r=request_id, p=realized: execute(
                    "INSERT INTO outcomes (request_id, row_index, price, observed_on, "
                    "received_at) VALUES (%s, 0, %s, '2026-12-01', 'now')",
                    (r, p),
                )
            )
    store.close()
    engine = connect(f"sqlite:///{tmp_path}/p.db")
    yield engine
    engine.dispose()


def test_only_valuations_of_the_window_with_a_realized_price_are_joined(store):
    joined = joined_outcomes(store, START, END)
    assert sorted(joined["realized"]) == [4_000, 5_500, 11_000, 15_000]


def test_figures_per_version_and_sector_are_the_direct_computation(store):
    table = accuracy_table(joined_outcomes(store, START, END)).set_index(
        ["model_version", "sector"]
    )
    # version 3 over every sector: errors -1000, +5000, -500 on 11000, 15000, 5500
    v3 = table.loc[("3", "all")]
    assert v3["mae"] == pytest.approx((1000 + 5000 + 500) / 3)
    assert v3["mape"] == pytest.approx((1000 / 11000 + 5000 / 15000 + 500 / 5500) / 3)
    assert v3["bias"] == pytest.approx((-1000 + 5000 - 500) / 3)
    assert v3["coverage"] == pytest.approx(2 / 3)  # 15000 is outside [16000, 24000]
    assert v3["count"] == 3
    assert table.loc[("3", "vitacura"), "mae"] == pytest.approx(3000)
    assert table.loc[("3", "nunoa"), "count"] == 1
    v4 = table.loc[("4", "all")]
    assert (v4["mae"], v4["bias"], v4["coverage"], v4["count"]) == (2000, 2000, 0, 1)
    assert sorted(table.index) == [
        ("3", "all"), ("3", "nunoa"), ("3", "vitacura"), ("4", "all"), ("4", "nunoa")
    ]  # fmt: skip


def test_a_row_without_a_range_counts_for_mae_not_coverage():
    joined = pd.DataFrame(
        [("3", "x", 100.0, 90.0, 110.0, 100.0), ("3", "x", 100.0, None, None, 50.0)],
        columns=["model_version", "sector", "predicted", "price_low", "price_high", "realized"],
    )
    overall = accuracy_table(joined).set_index("sector").loc["all"]
    assert (overall["mae"], overall["coverage"], overall["count"]) == (25.0, 1.0, 2)


def test_gauges_carry_the_limit_from_the_factor_and_the_alert_settings(store):
    settings = Settings.from_env({"MONITOR_MAE_FACTOR": "2", "MONITOR_MIN_OUTCOMES": "5"})
    table = accuracy_table(joined_outcomes(store, START, END))
    rows = {(v, s, n): x for v, s, n, x in gauge_rows(table, {"3": 1500.0}, settings, 1.0)}
    assert rows[("3", "all", "model_live_mae_uf")] == pytest.approx(6500 / 3)
    assert rows[("3", "", "model_test_mae_uf")] == 1500.0
    assert rows[("3", "", "model_live_mae_limit_uf")] == 3000.0
    assert ("4", "", "model_live_mae_limit_uf") not in rows  # no test MAE known
    assert rows[("", "", "model_live_min_outcomes")] == 5.0
    assert rows[("", "", "model_live_coverage_band_ratio")] == 0.1


def test_publishing_replaces_the_previous_figures_which_the_gateway_reads(store, tmp_path):
    publish(store, [("3", "all", "model_live_mae_uf", 1.0), ("4", "all", "model_live_mae_uf", 2.0)])
    publish(store, [("4", "all", "model_live_mae_uf", 3.0)])
    rows = Store(f"sqlite:///{tmp_path}/p.db").run(
        lambda execute: execute("SELECT model_version, sector, name, value FROM live_accuracy")
    )
    assert rows == [("4", "all", "model_live_mae_uf", 3.0)]


def test_the_monitor_declares_the_columns_the_gateway_creates(tmp_path):
    Store(f"sqlite:///{tmp_path}/gateway.db").run(lambda execute: None)  # creates the tables
    reflected = sa.MetaData()
    reflected.reflect(sa.create_engine(f"sqlite:///{tmp_path}/gateway.db"))
    columns = {t.name: [c.name for c in t.columns] for t in reflected.sorted_tables}
    assert columns == {t.name: [c.name for c in t.columns] for t in metadata.sorted_tables}


def test_a_store_no_gateway_wrote_to_has_empty_tables(tmp_path):
    engine = connect(f"sqlite:///{tmp_path}/folder/new.db")
    assert joined_outcomes(engine, START, END).empty


def test_the_monitor_publishes_only_gauges_the_gateway_exposes():
    assert set(monitor.GAUGES.values()) <= set(outcomes.LIVE_GAUGES)
    assert monitor.ALL_SECTORS == outcomes.ALL_SECTORS
