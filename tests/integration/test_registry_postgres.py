"""The registry's moves on a tracking store in a real PostgreSQL, as compose and Kubernetes
run it (the other tests use sqlite, which compares an integer with a string where PostgreSQL
refuses to)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from steps.registry import move_champion
from tests.support.postgres import running_postgres
from tests.support.tracking import MODEL, registry_state

pytestmark = pytest.mark.integration


@pytest.fixture
def postgres_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """Three versions of the model in a registry on a fresh PostgreSQL database."""
    with running_postgres() as admin_url:
        with sa.create_engine(admin_url, isolation_level="AUTOCOMMIT").connect() as db:
            db.execute(sa.text("CREATE DATABASE mlflow"))
        url = admin_url.rsplit("/", 1)[0] + "/mlflow"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)
        client = MlflowClient(url, url)
        client.create_registered_model(MODEL)
        for _ in range(3):
            client.create_model_version(MODEL, source="file:///nonexistent/model")
        yield client


def test_moving_the_champion_archives_the_former_production_version(postgres_registry):
    assert move_champion(MODEL, "champion", "1") is None
    assert move_champion(MODEL, "champion", "3") == "1"
    state = registry_state(postgres_registry)
    assert state["aliases"] == {"champion": 3, "previous-champion": 1}
    stages = {version: v["stage"] for version, v in state["versions"].items()}
    assert stages == {1: "Archived", 2: "None", 3: "Production"}
    assert "promoted_at" in state["versions"][3]["tags"]
