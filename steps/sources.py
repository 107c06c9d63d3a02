"""Where raw listings come from: a folder of CSV files, a SQL database or synthetic data.

The ingest step calls `open_source(spec)` and reads the "train" and "test" splits; the spec
alone decides the kind of source, so the client's CSVs or a database replace the shipped data
without code changes. Sources only read: rows and columns come back as stored (extra columns
included); validating and cleaning them is the ingest step's job.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from config.errors import UserError

SPLITS = ("train", "test")
_QUERY = re.compile(r"\s*(select|with)\b", re.IGNORECASE)
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:).*@")


class SourceError(UserError):
    """A split cannot be read: the message says what and where (never a password)."""


class DataSource:
    """Base of all sources: named splits, each read into a DataFrame of raw rows."""

    def __init__(self, train: str = "train", test: str = "test") -> None:
        self.names = {"train": train, "test": test}

    def has_split(self, split: str) -> bool:
        return bool(self._name(split))

    def read(self, split: str) -> pd.DataFrame:
        """The raw rows of `split`; SourceError if absent, unreadable or without rows."""
        name = self._name(split)
        if not name:
            raise SourceError(f"{self.describe()} has no {split!r} split")
        frame = self._read(name)
        if frame.empty:
            raise SourceError(f"{self._where(name)} has no rows")
        return frame

    def describe(self) -> str:
        """A one-line description safe for logs (no secrets)."""
        raise NotImplementedError

    def _read(self, name: str) -> pd.DataFrame:
        raise NotImplementedError

    def _where(self, name: str) -> str:
        return f"split {name!r} of {self.describe()}"

    def _name(self, split: str) -> str:
        if split not in SPLITS:
            raise SourceError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        return self.names[split]


class CsvFolderSource(DataSource):
    """`<folder>/<train>.csv` and `<folder>/<test>.csv` (the client's delivery format)."""

    def __init__(self, folder: Path | str, train: str = "train", test: str = "test") -> None:
        super().__init__(train, test)
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        """The file of split `name` (given with or without its .csv suffix)."""
        return self.folder / (name if name.lower().endswith(".csv") else f"{name}.csv")

    def describe(self) -> str:
        files = ", ".join(f"{s}={self.path(n).name}" for s, n in self.names.items() if n)
        return f"CSV folder {self.folder} ({files})"

    def _where(self, name: str) -> str:
        return str(self.path(name))

    def _read(self, name: str) -> pd.DataFrame:
        path = self.path(name)
        if not self.folder.is_dir():
            raise SourceError(f"data folder {self.folder} does not exist")
        if not path.is_file():
            found = ", ".join(sorted(p.name for p in self.folder.glob("*.csv"))) or "none"
            raise SourceError(f"{path} does not exist (CSV files in {self.folder}: {found})")
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise SourceError(f"{path} is not a readable CSV file: {_one_line(error)}") from error


class SqlSource(DataSource):
    """Tables or SELECT/WITH queries in any database SQLAlchemy reaches (sqlite, PostgreSQL)."""

    def __init__(self, url: str, train: str = "train", test: str = "test") -> None:
        super().__init__(train, test)
        self.url = _parse_url(url)
        self.safe_url = self.url.render_as_string(hide_password=True)

    def describe(self) -> str:
        splits = ", ".join(f"{split}={name}" for split, name in self.names.items() if name)
        return f"SQL database {self.safe_url} ({splits})"

    def _what(self, name: str) -> str:
        return f"{'query' if _QUERY.match(name) else 'table'} {name!r}"

    def _where(self, name: str) -> str:
        return f"{self._what(name)} in {self.safe_url}"

    def _read(self, name: str) -> pd.DataFrame:
        with self._connect() as connection:
            try:
                return pd.read_sql(self._statement(connection, name), connection)
            except (SQLAlchemyError, pd.errors.DatabaseError) as error:
                doing = f"reading {self._what(name)} from"
                raise SourceError(self._failure(doing, error)) from error

    def _statement(self, connection: sa.Connection, name: str) -> sa.Executable:
        if _QUERY.match(name):
            return sa.text(name)
        schema, _, table = name.rpartition(".")
        schema_or_default, inspector = schema or None, sa.inspect(connection)
        if not inspector.has_table(table, schema=schema_or_default):
            existing = inspector.get_table_names(schema=schema_or_default)
            listed = ", ".join(sorted(existing)) or "none"
            raise SourceError(
                f"{self._what(name)} not found in {self.safe_url} (tables there: {listed})"
            )
        selected = sa.table(table, schema=schema_or_default)
        return sa.select(sa.literal_column("*")).select_from(selected)

    @contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        """One connection on a fresh engine, disposed afterwards."""
        database = self.url.database or ""
        on_disk = database not in ("", ":memory:") and not database.startswith("file:")
        if self.url.get_backend_name() == "sqlite" and on_disk and not Path(database).is_file():
            raise SourceError(f"cannot connect to {self.safe_url}: {database} does not exist")
        try:
            engine = sa.create_engine(self.url, poolclass=NullPool, connect_args=self._options())
        except (SQLAlchemyError, ImportError) as error:
            raise SourceError(self._failure("no driver for", error)) from error
        try:
            try:
                connection = engine.connect()
            except SQLAlchemyError as error:
                raise SourceError(self._failure("cannot connect to", error)) from error
            with connection:
                yield connection
        finally:
            engine.dispose()

    def _options(self) -> dict[str, object]:
        """A bounded connect for PostgreSQL unless the URL sets its own connect_timeout."""
        if self.url.get_backend_name() != "postgresql" or "connect_timeout" in self.url.query:
            return {}
        return {"connect_timeout": 10}

    def _failure(self, doing: str, error: BaseException) -> str:
        cause = error.__cause__ if isinstance(error, pd.errors.DatabaseError) else error
        reason = _one_line(getattr(cause, "orig", None) or cause or error)
        if self.url.password:
            reason = reason.replace(str(self.url.password), "***")
        return f"{doing} {self.safe_url}: {reason}"


@dataclass(eq=False)  # compared by identity, like the other sources
class SyntheticSource(DataSource):
    """Realistic generated listings (steps.generate), deterministic from the seed."""

    variant: str = "realistic"
    seed: int = 42
    train_rows: int = 16_212
    test_rows: int = 6_949

    def __post_init__(self) -> None:
        super().__init__()
        self._splits: dict[str, pd.DataFrame] | None = None

    def describe(self) -> str:
        options = ", ".join(f"{key}={value}" for key, value in asdict(self).items())
        return f"synthetic data ({options})"

    def _read(self, name: str) -> pd.DataFrame:
        if self._splits is None:
            from steps.generate import generate_splits

            self._splits = dict(zip(SPLITS, generate_splits(**asdict(self)), strict=True))
        return self._splits[name].copy()


def open_source(spec: str, train: str = "train", test: str = "test") -> DataSource:
    """The source named by `spec`: a SQLAlchemy URL, `synthetic[:k=v,...]` or a CSV folder.

    `train`/`test` name the files, tables or queries of each split (ignored for synthetic
    data); an empty `test` means the source has a train split only.
    """
    if "://" in spec:
        return SqlSource(spec, train, test)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return SyntheticSource(**_synthetic_options(spec.partition(":")[2]))  # type: ignore[arg-type]
    return CsvFolderSource(Path(spec), train, test)


def _synthetic_options(text: str) -> dict[str, int | str]:
    from steps.generate import VARIANTS

    options: dict[str, int | str] = {}
    keys = [option.name for option in fields(SyntheticSource)]
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in keys:
            raise SourceError(f"unknown synthetic option {key!r}; allowed: {', '.join(keys)}")
        if key == "variant" and value not in VARIANTS:
            raise SourceError(
                f"unknown synthetic variant {value!r}; allowed: {', '.join(VARIANTS)}"
            )
        if key != "variant" and not value.lstrip("-").isdigit():
            raise SourceError(f"synthetic option {item!r} must be an integer")
        options[key] = value if key == "variant" else int(value)
    return options


def _parse_url(url: str) -> URL:
    """The URL as SQLAlchemy reads it; plain postgresql:// uses psycopg 3 (no psycopg2 here)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        hidden = _PASSWORD_IN_URL.sub(r"\1***@", url)
        raise SourceError(
            f"invalid database URL {hidden} (expected dialect+driver://user:password@host:port/db)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
