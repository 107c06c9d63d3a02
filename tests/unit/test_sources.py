"""Data sources: CSV folders, SQL databases (sqlite here) and the synthetic spec, offline."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pyfunc.schema import FEATURE_NAMES, TARGET, example_listing
from steps.sources import (
    CsvFolderSource,
    SourceError,
    SqlSource,
    SyntheticSource,
    open_source,
)
from tests.support.processes import free_port

COLUMNS = ["id", *FEATURE_NAMES, TARGET.name]


def listings(rows: int, start: int = 0) -> pd.DataFrame:
    """`rows` listings in the client's schema, with an extra `id` column."""
    records = [
        {"id": start + i, **example_listing(), TARGET.name: 10_000 + 100 * (start + i)}
        for i in range(rows)
    ]
    return pd.DataFrame.from_records(records, columns=COLUMNS)


@pytest.fixture
def csv_folder(tmp_path: Path) -> Path:
    listings(3).to_csv(tmp_path / "train.csv", index=False)
    listings(2, start=3).to_csv(tmp_path / "test.csv", index=False)
    return tmp_path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'listings.db'}"
    engine = sa.create_engine(url)
    listings(3).to_sql("train", engine, index=False)
    listings(2, start=3).to_sql("test", engine, index=False)
    listings(0).to_sql("empty", engine, index=False)
    engine.dispose()
    return url


def test_csv_folder_round_trip(csv_folder: Path) -> None:
    source = CsvFolderSource(csv_folder)

    pd.testing.assert_frame_equal(source.read("train"), pd.read_csv(csv_folder / "train.csv"))
    assert source.read("test")["id"].tolist() == [3, 4]
    assert list(source.read("train").columns) == COLUMNS
    assert source.has_split("train") and source.has_split("test")


def test_csv_names_may_carry_the_suffix(csv_folder: Path) -> None:
    source = CsvFolderSource(csv_folder, train="train.csv", test="test.CSV")

    assert len(source.read("train")) == 3
    assert source.path("test.CSV") == csv_folder / "test.CSV"


def test_csv_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist") as error:
        CsvFolderSource(tmp_path / "nowhere").read("train")
    assert f"data folder {tmp_path / 'nowhere'} does not exist" in str(error.value)


def test_csv_missing_file_names_it_and_lists_what_is_there(csv_folder: Path) -> None:
    with pytest.raises(SourceError) as error:
        CsvFolderSource(csv_folder, train="listings").read("train")
    assert str(error.value) == (
        f"{csv_folder / 'listings.csv'} does not exist "
        f"(CSV files in {csv_folder}: test.csv, train.csv)"
    )


def test_csv_empty_file_says_no_rows(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(SourceError) as error:
        CsvFolderSource(tmp_path).read("train")
    assert str(error.value) == f"{tmp_path / 'train.csv'} has no rows"


def test_csv_header_only_says_no_rows(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(SourceError) as error:
        CsvFolderSource(tmp_path).read("train")
    assert str(error.value) == f"{tmp_path / 'train.csv'} has no rows"


def test_single_split_source_has_no_test(csv_folder: Path) -> None:
    source = CsvFolderSource(csv_folder, test="")

    assert source.has_split("train") is True
    assert source.has_split("test") is False
    assert source.describe() == f"CSV folder {csv_folder} (train=train.csv)"
    with pytest.raises(SourceError) as error:
        source.read("test")
    assert str(error.value) == f"CSV folder {csv_folder} (train=train.csv) has no 'test' split"


def test_unknown_split_is_refused(csv_folder: Path) -> None:
    with pytest.raises(SourceError, match="split must be one of train, test; got 'valid'"):
        CsvFolderSource(csv_folder).has_split("valid")


def test_sqlite_tables_round_trip(sqlite_url: str) -> None:
    source = SqlSource(sqlite_url)

    pd.testing.assert_frame_equal(source.read("train"), listings(3))
    pd.testing.assert_frame_equal(source.read("test"), listings(2, start=3))


def test_sql_query_as_a_split(sqlite_url: str) -> None:
    source = SqlSource(
        sqlite_url,
        test="  with t as (SELECT * FROM train) select id, price from t where id >= 1 order by id",
    )

    frame = source.read("test")

    assert frame.to_dict("list") == {"id": [1, 2], "price": [10_100, 10_200]}


def test_sqlite_schema_qualified_table(sqlite_url: str) -> None:
    assert len(SqlSource(sqlite_url, train="main.train").read("train")) == 3


def test_sqlite_single_table_source(sqlite_url: str) -> None:
    source = SqlSource(sqlite_url, train="train", test="")

    assert source.has_split("test") is False
    assert len(source.read("train")) == 3


def test_missing_table_lists_the_existing_ones(sqlite_url: str) -> None:
    with pytest.raises(SourceError) as error:
        SqlSource(sqlite_url, train="listings").read("train")
    assert str(error.value) == (
        f"table 'listings' not found in {sqlite_url} (tables there: empty, test, train)"
    )


def test_empty_table_says_no_rows(sqlite_url: str) -> None:
    with pytest.raises(SourceError) as error:
        SqlSource(sqlite_url, train="empty").read("train")
    assert str(error.value) == f"table 'empty' in {sqlite_url} has no rows"


def test_empty_query_result_says_no_rows(sqlite_url: str) -> None:
    query = "SELECT * FROM train WHERE price < 0"
    with pytest.raises(SourceError, match="has no rows") as error:
        SqlSource(sqlite_url, train=query).read("train")
    assert f"query {query!r} in {sqlite_url} has no rows" == str(error.value)


def test_bad_query_names_it_with_the_driver_reason(sqlite_url: str) -> None:
    with pytest.raises(SourceError) as error:
        SqlSource(sqlite_url, train="select nope from train").read("train")
    assert str(error.value) == (
        f"reading query 'select nope from train' from {sqlite_url}: no such column: nope"
    )


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    database = tmp_path / "missing.db"
    with pytest.raises(SourceError) as error:
        SqlSource(f"sqlite:///{database}").read("train")
    assert str(error.value) == f"cannot connect to sqlite:///{database}: {database} does not exist"
    assert not database.exists()


def test_password_never_shown() -> None:
    url = f"postgresql://reader:s3cr3t-pw@127.0.0.1:{free_port()}/listings?connect_timeout=2"
    source = open_source(url)

    with pytest.raises(SourceError) as error:
        source.read("train")

    assert "cannot connect to postgresql+psycopg://reader:***@127.0.0.1:" in str(error.value)
    assert "s3cr3t-pw" not in str(error.value)
    assert "s3cr3t-pw" not in source.describe()
    assert "reader:***@" in source.describe()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql+nodriver://u:s3cr3t-pw@db/x", "no driver for mysql+nodriver://u:***@db/x"),
        ("postgresql://u:s3cr3t-pw@db:port/x", "invalid database URL postgresql://u:***@db"),
    ],
)
def test_password_hidden_in_url_errors(url: str, expected: str) -> None:
    with pytest.raises(SourceError) as error:
        open_source(url).read("train")
    assert expected in str(error.value)
    assert "s3cr3t-pw" not in str(error.value)


def test_open_source_dispatch(csv_folder: Path, sqlite_url: str) -> None:
    folder = open_source(str(csv_folder))
    database = open_source(sqlite_url, train="train", test="")
    synthetic = open_source("synthetic:variant=noisy,seed=7, train_rows=1000,test_rows=500")

    assert isinstance(folder, CsvFolderSource) and folder.folder == csv_folder
    assert isinstance(database, SqlSource) and not database.has_split("test")
    assert isinstance(synthetic, SyntheticSource)
    assert (synthetic.variant, synthetic.seed, synthetic.train_rows, synthetic.test_rows) == (
        "noisy",
        7,
        1000,
        500,
    )
    assert open_source("synthetic").describe() == (
        "synthetic data (variant=realistic, seed=42, train_rows=16212, test_rows=6949)"
    )


def test_plain_postgresql_url_uses_psycopg3() -> None:
    source = open_source("postgresql://u@localhost/db")

    assert isinstance(source, SqlSource)
    assert source.url.drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "synthetic:rows=5",
            "unknown synthetic option 'rows'; allowed: variant, seed, train_rows, test_rows",
        ),
        ("synthetic:seed=x", "synthetic option 'seed=x' must be an integer"),
        (
            "synthetic:variant=calm",
            "unknown synthetic variant 'calm'; allowed: realistic, noisy, local, buildings, smooth",
        ),
    ],
)
def test_bad_synthetic_spec(spec: str, message: str) -> None:
    with pytest.raises(SourceError) as error:
        open_source(spec)
    assert str(error.value) == message


def test_synthetic_reads_generate_splits_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, int, str]] = []

    def generate_splits(seed: int, train_rows: int, test_rows: int, variant: str):
        calls.append((seed, train_rows, test_rows, variant))
        return listings(train_rows), listings(test_rows, start=train_rows)

    module = types.ModuleType("steps.generate")
    module.generate_splits = generate_splits
    monkeypatch.setitem(sys.modules, "steps.generate", module)
    source = SyntheticSource(seed=7, train_rows=4, test_rows=2, variant="local")

    assert len(source.read("train")) == 4
    assert source.read("test")["id"].tolist() == [4, 5]
    assert calls == [(7, 4, 2, "local")]


def test_synthetic_spec_reads_the_named_variant() -> None:
    from steps.generate import generate_splits

    source = open_source("synthetic:variant=noisy,seed=3,train_rows=300,test_rows=100")

    train, test = generate_splits(3, 300, 100, variant="noisy")
    pd.testing.assert_frame_equal(source.read("train"), train)
    pd.testing.assert_frame_equal(source.read("test"), test)
