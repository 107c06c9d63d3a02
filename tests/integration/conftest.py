"""Integration fixtures: a trained and promoted model in a throw-away store, and its server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import SMALL_SOURCE, ModelServer, run_step, store_env


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tracking store where `steps.main` trained, registered and promoted version 1."""
    workdir = tmp_path_factory.mktemp("store")
    run_step("steps.main", "--source", SMALL_SOURCE, env=store_env(workdir), cwd=workdir)
    return workdir


@pytest.fixture(scope="session")
def model_server(trained_store: Path) -> Iterator[ModelServer]:
    """The champion served by MLflow's real scoring server, stopped at the end."""
    server = ModelServer(trained_store, store_env(trained_store))
    server.start()
    try:
        yield server
    finally:
        server.stop()
