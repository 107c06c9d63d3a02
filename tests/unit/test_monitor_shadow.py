"""Champion vs challenger: the rows both priced in a real SQLite store (the gateway's tables),
and the comparison's figures against a direct computation on the same rows."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest
import sqlalchemy as sa

from gateway import outcomes
from gateway.store import (
    PREDICTIONS,
    SHADOW_PREDICTIONS,
    Store,
    insert_predictions,
    prediction_rows,
)
from steps import monitor
from steps.monitor import shadow_gauge_rows, shadow_table
from steps.prediction_store import SHADOWED_COLUMNS, connect, shadow_evidence, shadowed

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
END = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
IN, BEFORE = "2026-11-02T10:00:00.000Z", "2026-10-30T10:00:00.000Z"
# (request id, valued at, champion's version and prices or None, challenger's version and
# prices or None, realized price per row or None)
REQUESTS = [
    ("a", IN, ("3", [10_000, 20_000]), ("4", [11_000, 18_000]), [10_500, None]),
    ("b", IN, ("3", [5_000]), ("4", [5_600]), [6_000]),
    ("c", IN, ("3", [7_000]), ("5", [7_700]), [None]),
    ("d", BEFORE, ("3", [9_000]), ("4", [9_900]), [9_000]),  # before the window
    ("e", IN, ("3", [8_000]), None, [8_100]),  # not copied to the challenger
    ("f", IN, None, ("4", [3_000]), [None]),  # the champion's rows were lost
]


@pytest.fixture
def engine(tmp_path) -> sa.Engine:
    """The gateway's store with REQUESTS; the monitor's engine on it."""
    store = Store(f"sqlite:///{tmp_path}/p.db")
    for request_id, at, champion, challenger, realized in REQUESTS:
        for table, priced in ((PREDICTIONS, champion), (SHADOW_PREDICTIONS, challenger)):
            if priced is not None:
                version, prices = priced
                answer = [{"price": p} for p in prices]
                rows = prediction_rows(request_id, "k", at, version, ["nunoa"] * len(prices),
                                       None, answer)  # fmt: skip
                store.run(lambda execute, rows=rows, t=table: insert_predictions(execute, rows, t))
        for row, price in enumerate(realized):
            if price is not None:
                store.run(
                    lambda execute, r=request_id, i=row, p=price: execute(
                        "INSERT INTO outcomes (request_id, row_index, price, observed_on, "
                        "received_at) VALUES (%s, %s, %s, '2026-12-01', 'now')",
                        (r, i, p),
                    )
                )
    store.close()
    engine = connect(f"sqlite:///{tmp_path}/p.db")
    yield engine
    engine.dispose()


def test_only_rows_priced_by_both_in_the_window_are_compared(engine) -> None:
    frame = shadowed(engine, START, END)
    assert sorted(zip(frame["request_id"], frame["challenger"], strict=True)) == [
        ("a", 11_000), ("a", 18_000), ("b", 5_600), ("c", 7_700)
    ]  # fmt: skip


def test_the_comparison_is_the_direct_computation(engine) -> None:
    table = shadow_table(shadowed(engine, START, END)).set_index("challenger_version")
    v4 = table.loc["4"]
    # rows a0, a1, b0: challenger minus champion +1000, -2000, +600; realized on a0 and b0
    assert (v4["champion_versions"], v4["requests"], v4["rows"]) == ("3", 2, 3)
    assert v4["mean_abs_diff"] == pytest.approx((1000 + 2000 + 600) / 3)
    assert v4["mean_diff"] == pytest.approx((1000 - 2000 + 600) / 3)
    assert v4["outcomes"] == 2
    assert v4["challenger_mae"] == pytest.approx((abs(11_000 - 10_500) + abs(5_600 - 6_000)) / 2)
    assert v4["champion_mae"] == pytest.approx((abs(10_000 - 10_500) + abs(5_000 - 6_000)) / 2)
    v5 = table.loc["5"]
    assert (v5["requests"], v5["mean_diff"], v5["outcomes"]) == (1, 700, 0)
    assert math.isnan(v5["challenger_mae"]) and math.isnan(v5["champion_mae"])


def test_the_gauges_leave_out_what_was_not_measured(engine) -> None:
    rows = shadow_gauge_rows(shadow_table(shadowed(engine, START, END)))
    gauges = {(version, name): value for version, _, name, value in rows}
    assert gauges[("4", "model_shadow_mae_uf")] == pytest.approx(450)
    assert gauges[("4", "model_shadow_champion_mae_uf")] == pytest.approx(750)
    assert gauges[("5", "model_shadow_price_diff_uf")] == pytest.approx(700)
    assert ("5", "model_shadow_mae_uf") not in gauges
    assert {sector for _, sector, _, _ in rows} == {""}
    assert set(monitor.SHADOW_GAUGES.values()) <= set(outcomes.LIVE_GAUGES)


def test_the_evidence_of_a_version_counts_every_request_it_priced_in_shadow(engine) -> None:
    # a, b, d (before the window) and f (whose champion rows were lost); realized: a0, b0, d0
    assert shadow_evidence(engine, "4") == (4, 3)
    assert shadow_evidence(engine, "5") == (1, 0)
    assert shadow_evidence(engine, "6") == (0, 0)


def test_a_figure_not_measured_is_written_as_null() -> None:
    frame = pd.DataFrame(
        [("5", "3", "c", 7_000.0, 7_700.0, float("nan"))], columns=list(SHADOWED_COLUMNS)
    )
    (written,) = monitor._records(shadow_table(frame))
    assert (written["mean_diff"], written["challenger_mae"], written["champion_mae"]) == (
        700.0,
        None,
        None,
    )


def test_no_copy_in_the_window_gives_an_empty_comparison(engine) -> None:
    later = END + dt.timedelta(days=30)
    assert shadow_table(shadowed(engine, END, later)).empty
