"""SqlSource against a real, throw-away PostgreSQL server on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pyfunc.schema import CATEGORICAL_NAMES, NUMERIC_BY_NAME, NUMERIC_NAMES, TARGET
from steps.sources import SourceError, SqlSource, open_source
from tests.support.postgres import running_postgres
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

SECTORS = ["las condes", "vitacura", "nunoa", "providencia", "la reina", "lo barnechea"]


def listings(rows: int, seed: int) -> pd.DataFrame:
    """`rows` listings in the client's schema (plus an `id`), drawn inside the schema's bounds."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": np.arange(rows, dtype="int64") + seed * 10_000})
    frame[CATEGORICAL_NAMES[0]] = rng.choice(["casa", "departamento"], rows)
    frame[CATEGORICAL_NAMES[1]] = rng.choice(SECTORS, rows)
    for name in NUMERIC_NAMES:
        feature = NUMERIC_BY_NAME[name]
        values = rng.uniform(feature.minimum, min(feature.maximum, feature.minimum + 500), rows)
        frame[name] = np.round(values) if feature.integral else values
    frame.loc[::50, "n_rooms"] = np.nan
    frame[TARGET.name] = rng.uniform(2_000, 40_000, rows).round(1)
    return frame


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A server holding tables train (300 rows), test (120 rows) and client.listings."""
    with running_postgres() as url:
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE SCHEMA client"))
        listings(300, seed=1).to_sql("train", engine, index=False)
        listings(120, seed=2).to_sql("test", engine, index=False)
        listings(40, seed=3).to_sql("listings", engine, schema="client", index=False)
        engine.dispose()
        yield url


def test_tables_round_trip_as_stored(postgres_url: str) -> None:
    source = open_source(postgres_url)

    pd.testing.assert_frame_equal(source.read("train"), listings(300, seed=1))
    pd.testing.assert_frame_equal(source.read("test"), listings(120, seed=2))


def test_query_split(postgres_url: str) -> None:
    query = "SELECT id, sector, price FROM train WHERE type = 'casa' ORDER BY id"
    expected = listings(300, seed=1).query("type == 'casa'")[["id", "sector", "price"]]

    frame = open_source(postgres_url, test=query).read("test")

    pd.testing.assert_frame_equal(frame, expected.reset_index(drop=True))


def test_schema_qualified_table(postgres_url: str) -> None:
    source = open_source(postgres_url, train="client.listings", test="")

    pd.testing.assert_frame_equal(source.read("train"), listings(40, seed=3))
    assert source.has_split("test") is False


def test_missing_table_lists_the_existing_ones(postgres_url: str) -> None:
    with pytest.raises(SourceError) as error:
        open_source(postgres_url, train="listings").read("train")
    assert str(error.value) == (
        f"table 'listings' not found in {postgres_url} (tables there: test, train)"
    )


def test_plain_postgresql_url_uses_psycopg3(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")

    source = open_source(plain)

    assert isinstance(source, SqlSource)
    assert len(source.read("train")) == 300


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("kind", ["closed", "silent"])
def test_unreachable_server_fails_fast(kind: str, request: pytest.FixtureRequest) -> None:
    port = free_port() if kind == "closed" else request.getfixturevalue("silent_port")
    url = f"postgresql://postgres:pw@127.0.0.1:{port}/postgres?connect_timeout=2"
    started = time.monotonic()

    with pytest.raises(SourceError) as error:
        open_source(url).read("train")

    assert time.monotonic() - started < 5
    assert str(error.value).startswith(
        f"cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:{port}/postgres"
    )
    assert ":pw@" not in str(error.value)
