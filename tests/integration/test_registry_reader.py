"""The rollout controller's registry reader against a real `mlflow server`: what MLflow's
client says of the same store, over MLflow's REST API, and a clear error when the server is
gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.errors import UserError
from steps import registry
from steps.registry_reader import RestRegistry
from tests.support.processes import VENV_BIN, free_port, running
from tests.support.stack import store_env
from tests.support.tracking import MODEL, client_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def tracking_server(trained_store: Path) -> Iterator[str]:
    """`mlflow server` on the trained store; its URL."""
    port = free_port()
    store = store_env(trained_store)["MLFLOW_TRACKING_URI"]
    command = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", store]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    env = store_env(trained_store, MLFLOW_DISABLE_TELEMETRY="true")
    with running(command, f"{url}/health", trained_store / "tracking-server.log", env, timeout=120):
        yield url


@pytest.fixture(scope="module")
def mlflow_client_on(trained_store: Path, monkeypatch_module: pytest.MonkeyPatch) -> None:
    """MLflow's own client (`steps.registry`) on the same store."""
    uri = store_env(trained_store)["MLFLOW_TRACKING_URI"]
    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch_module.setenv("MLFLOW_REGISTRY_URI", uri)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize(
    "uri",
    [
        f"models:/{MODEL}@champion",
        f"models:/{MODEL}/1",
        f"models:/{MODEL}/Production",
        f"models:/{MODEL}/production",
        "runs:/abc/model",
    ],
)
def test_a_uri_resolves_over_rest_as_mlflow_s_client_resolves_it(
    tracking_server: str, mlflow_client_on: None, uri: str
) -> None:
    expected = registry.resolve(uri)

    assert RestRegistry(tracking_server).resolve(uri) == expected
    assert expected["version"] in ("1", "unregistered")


@pytest.mark.parametrize(
    "uri",
    [
        f"models:/{MODEL}@staging",
        f"models:/{MODEL}/9",
        f"models:/{MODEL}/Staging",
        "models:/nothing@champion",
        "models:/nothing/1",
    ],
)
def test_what_does_not_exist_is_said_as_mlflow_s_client_says_it(
    tracking_server: str, mlflow_client_on: None, uri: str
) -> None:
    with pytest.raises(UserError) as expected:
        registry.resolve(uri)
    with pytest.raises(UserError) as got:
        RestRegistry(tracking_server).resolve(uri)

    assert str(got.value) == str(expected.value)


def test_a_version_s_tags_are_mlflow_s(
    tracking_server: str, trained_store: Path, mlflow_client_on: None
) -> None:
    tags = client_for(trained_store).get_model_version(MODEL, "1").tags

    assert RestRegistry(tracking_server).tags(MODEL, "1") == tags
    assert "verdict" in tags


def test_a_server_that_does_not_answer_is_said_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(UserError, match=f"^the tracking server at {url}/api/2.0/mlflow cannot"):
        RestRegistry(url).resolve(f"models:/{MODEL}@champion")
