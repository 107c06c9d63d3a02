"""Fixtures of the pipeline's unit tests: tiny data, tiny params, a throw-away MLflow store.

Heavy libraries (pandas, scikit-learn, MLflow) are imported inside the fixtures, so the gateway's
unit tests, which share this folder, do not pay for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.mlflow_store import Store

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from config.settings import Settings
    from steps.params import Params


@pytest.fixture(scope="session")
def params() -> Params:
    """The committed params.yaml."""
    from steps.params import load_params

    return load_params()


@pytest.fixture(scope="session")
def tiny_params(params: Params) -> Params:
    """params.yaml with the smallest cross-validation: 2 folds, 2 candidates searched."""
    return dataclasses.replace(params, cv_folds=2, search_iterations=2)


@pytest.fixture(scope="session")
def listings() -> pd.DataFrame:
    """1,500 clean synthetic listings, price included."""
    from steps.generate import generate_listings

    return generate_listings(1_500, seed=7, dirty=False)


@pytest.fixture(scope="session")
def few_listings() -> pd.DataFrame:
    """300 clean synthetic listings, price included."""
    from steps.generate import generate_listings

    return generate_listings(300, seed=3, dirty=False)


@pytest.fixture(scope="session")
def small_pipeline(few_listings: pd.DataFrame) -> Pipeline:
    """The project's pipeline with a 5-tree forest, fitted on `few_listings`: quick to log."""
    from pyfunc.schema import FEATURE_NAMES, TARGET
    from steps.params import Candidate, Preset
    from steps.train import build_pipeline

    preset = Preset(
        "small",
        engineered_features=False,
        log_target=False,
        candidates=(Candidate("RandomForestRegressor", {}),),
    )
    pipeline = build_pipeline(preset, seed=0).set_params(model__n_estimators=5)
    return pipeline.fit(few_listings[list(FEATURE_NAMES)], few_listings[TARGET.name])


_MLFLOW_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
)


@contextlib.contextmanager
def _tracking(root: Path) -> Iterator[str]:
    """MLflow pointed at `root`/mlflow.db, from `root`, offline; unset again afterwards."""
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        for variable in _MLFLOW_VARIABLES:
            patch.delenv(variable, raising=False)
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("DO_NOT_TRACK", "true")
        patch.chdir(root)
        mlflow.set_tracking_uri(uri)
        try:
            assert mlflow.get_registry_uri() == uri
            yield uri
        finally:
            if mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)  # unset: back to the environment's or the default


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty tracking database with MLflow's tables, made once: creating them takes seconds,
    copying the file takes milliseconds."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow-template")
    with _tracking(root):
        MlflowClient().search_experiments()
    return root / "mlflow.db"


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory, _empty_store: Path) -> Iterator[Store]:
    """A throw-away sqlite store for one test module; MLflow is reset to unset afterwards.

    The working directory is the store's folder, so nothing MLflow writes by default lands in
    the project; telemetry is off, so nothing leaves the machine.
    """
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    shutil.copyfile(_empty_store, root / "mlflow.db")
    with _tracking(root):
        experiment_id = mlflow.create_experiment(
            "unit", artifact_location=(root / "artifacts").as_uri()
        )
        yield Store(root, experiment_id)


@pytest.fixture
def settings(mlflow_store: Store, model_name: str, tmp_path: Path) -> Settings:
    """Settings on `mlflow_store`, with `model_name` and a state folder of the test's own."""
    from config.settings import Settings

    return Settings.from_env(
        {
            "MLFLOW_TRACKING_URI": mlflow_store.uri,
            "MODEL_NAME": model_name,
            "STATE_DIR": str(tmp_path / "state"),
        }
    )


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name unique to the requesting test."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)


@pytest.fixture
def app(tmp_path: Path):
    """A gateway app with default test settings (no model server), closed afterwards."""
    from gateway.app import create_app, gateway_of
    from tests.support.gateway import gateway_settings

    app = create_app(gateway_settings(tmp_path))
    yield app
    gateway_of(app).close()
