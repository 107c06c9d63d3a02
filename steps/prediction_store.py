"""The prediction store as the monitor reads it: the tables the gateway writes (gateway/store.py
creates them, with their indexes), declared for SQLAlchemy Core.

The gateway keeps its own driver code (no SQLAlchemy in its image); these declarations name
the same columns, which `tests/unit/test_monitor_accuracy.py` checks. A store no gateway has
written to yet gets the tables here, empty.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from steps.tracking import StepError

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("row_index", sa.Integer, primary_key=True),
    sa.Column("listing_id", sa.Text),
    sa.Column("predicted_at", sa.Text, nullable=False),
    sa.Column("key_id", sa.Text),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("sector", sa.Text, nullable=False),
    sa.Column("price", sa.Double, nullable=False),
    sa.Column("price_low", sa.Double),
    sa.Column("price_high", sa.Double),
)
outcomes = sa.Table(
    "outcomes",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("row_index", sa.Integer, primary_key=True),
    sa.Column("price", sa.Double, nullable=False),
    sa.Column("observed_on", sa.Text, nullable=False),
    sa.Column("received_at", sa.Text, nullable=False),
    sa.Column("key_id", sa.Text),
    sa.Column("revisions", sa.Integer, nullable=False, server_default="0"),
)
live_accuracy = sa.Table(
    "live_accuracy",
    metadata,
    sa.Column("model_version", sa.Text, primary_key=True),
    sa.Column("sector", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Double, nullable=False),
    sa.Column("computed_at", sa.Text, nullable=False),
)
JOINED_COLUMNS = ("model_version", "sector", "predicted", "price_low", "price_high", "realized")


def connect(url: str) -> sa.Engine:
    """An engine on PREDICTION_STORE_URL (the gateway's `postgresql://` means psycopg here
    too), with the tables."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite:///"):  # as the gateway does, for a store nobody wrote yet
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    try:
        with store_errors():
            metadata.create_all(engine, checkfirst=True)
    except StepError:
        engine.dispose()
        raise
    return engine


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """A database failure as a one-line StepError (the driver's message, no SQL)."""
    try:
        yield
    except sa.exc.SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error
        raise StepError(f"prediction store (PREDICTION_STORE_URL): {cause}") from None


def iso(moment: dt.datetime) -> str:
    """The store's time format (gateway.requestlog.iso_utc): it sorts as text."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def joined_outcomes(engine: sa.Engine, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Valuations made in [start, end) that have a realized price: JOINED_COLUMNS."""
    p, o = predictions.c, outcomes.c
    query = (
        sa.select(p.model_version, p.sector, p.price, p.price_low, p.price_high, o.price)
        .join_from(
            predictions,
            outcomes,
            sa.and_(o.request_id == p.request_id, o.row_index == p.row_index),
        )
        .where(p.predicted_at >= iso(start), p.predicted_at < iso(end))
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=list(JOINED_COLUMNS))


def publish(engine: sa.Engine, rows: list[tuple[str, str, str, float]]) -> None:
    """Replace the live_accuracy table with (version, sector, gauge, value) `rows`, in one
    transaction."""
    computed_at = iso(dt.datetime.now(dt.UTC))
    keys = ("model_version", "sector", "name", "value")
    with engine.begin() as connection:
        connection.execute(live_accuracy.delete())
        if rows:
            connection.execute(
                live_accuracy.insert(),
                [dict(zip(keys, row, strict=True)) | {"computed_at": computed_at} for row in rows],
            )
