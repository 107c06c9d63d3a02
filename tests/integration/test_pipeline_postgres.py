"""The pipeline on tables of a real, throw-away PostgreSQL server reached with a password."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.support.postgres import running_postgres
from tests.support.stack import run_step, store_env
from tests.support.tracking import (
    MODEL,
    all_runs,
    client_for,
    registry_state,
)

pytestmark = pytest.mark.integration

ROLE, PASSWORD = "pf", "secret-pw"


@dataclass(frozen=True)
class Database:
    url: str  # as the client would write it: postgresql://pf:secret-pw@host:port/postgres
    admin_url: str  # the superuser's (trusted, no password)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """Tables train (1500 rows) and test (500) written by `steps.generate` as role pf."""
    workdir = tmp_path_factory.mktemp("postgres-generate")
    with running_postgres() as admin_url:
        engine = sa.create_engine(admin_url)
        with engine.begin() as connection:
            connection.execute(sa.text(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"))
            connection.execute(sa.text(f"GRANT ALL ON SCHEMA public TO {ROLE}"))
        engine.dispose()
        admin = make_url(admin_url)
        url = f"postgresql://{ROLE}:{PASSWORD}@{admin.host}:{admin.port}/{admin.database}"
        generate_url = url.replace("postgresql://", "postgresql+psycopg://")
        run_step(
            "steps.generate",
            "--url",
            generate_url,
            "--train-rows",
            "1500",
            "--test-rows",
            "500",
            env=store_env(workdir),
            cwd=workdir,
        )
        yield Database(url, admin_url)


def count(admin_url: str, query: str) -> int:
    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(query)).scalar_one())
    finally:
        engine.dispose()


def test_tables_are_owned_by_the_password_role(database: Database) -> None:
    owners = count(
        database.admin_url,
        f"SELECT count(*) FROM pg_tables WHERE tableowner = '{ROLE}' "
        "AND tablename IN ('train', 'test')",
    )
    assert owners == 2
    assert count(database.admin_url, "SELECT count(*) FROM train") == 1500


def test_main_on_postgresql_promotes_and_never_records_the_password(
    database: Database, tmp_path: Path
) -> None:
    env, client = store_env(tmp_path), client_for(tmp_path)

    result = run_step(
        "steps.main", "--source", database.url, "--preset", "notebook", env=env, cwd=tmp_path
    )

    assert "version 1: verdict no_champion" in result.stdout
    assert registry_state(client)["aliases"] == {"champion": 1}
    runs = all_runs(client)
    (ingest,) = [r for r in runs if r.data.tags.get("step") == "ingest"]
    port = make_url(database.url).port
    assert ingest.data.tags["source"] == (
        f"SQL database postgresql+psycopg://{ROLE}:***@127.0.0.1:{port}/postgres "
        "(train=train, test=test)"
    )
    assert ingest.data.metrics["train_rows_read"] == 1500
    assert ingest.data.metrics["test_rows_read"] == 500
    for run in runs:
        recorded = json.dumps([run.data.params, run.data.tags, run.info.run_name])
        assert PASSWORD not in recorded, run.data.tags.get("step")
    version = client.get_model_version(MODEL, "1")
    assert PASSWORD not in json.dumps([version.tags, version.description])
    assert PASSWORD not in result.stdout + result.stderr


def test_a_query_as_the_train_split(database: Database, tmp_path: Path) -> None:
    query = "SELECT * FROM train WHERE price > 0 AND type = 'casa'"
    env, client = store_env(tmp_path), client_for(tmp_path)

    run_step("steps.ingest", "--source", database.url, "--train", query, env=env, cwd=tmp_path)

    (ingest,) = all_runs(client)
    assert ingest.data.params["train"] == query
    expected = count(database.admin_url, query.replace("*", "count(*)"))
    assert 0 < expected < 1500
    metrics = ingest.data.metrics
    assert metrics["train_rows_read"] == expected
    assert metrics["test_rows_read"] == 500
    # Only houses were trained on: the test split's apartments are dropped as unknown.
    assert metrics["test_dropped_type_unseen_in_train"] > 0
    for split in ("train", "test"):
        clean = pd.read_parquet(
            client.download_artifacts(ingest.info.run_id, f"clean/{split}.parquet", str(tmp_path))
        )
        assert set(clean["type"]) == {"casa"}, split
        assert len(clean) == metrics[f"{split}_rows_kept"]
