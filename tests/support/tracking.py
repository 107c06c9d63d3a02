"""What the pipeline steps left in a throw-away tracking store, read back through MlflowClient,
and how a step that failed cleanly looks."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from tests.support.stack import store_env

MODEL = "property-friends"
SOURCE = "synthetic:train_rows=1500,test_rows=500"
STEPS = ("ingest", "train", "evaluate", "promote")


def client_for(workdir: Path) -> MlflowClient:
    """A client on the tracking store (and registry) that `store_env(workdir)` points at."""
    uri = store_env(workdir)["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def registry_state(client: MlflowClient, name: str = MODEL) -> dict[str, Any]:
    """Versions (stage and tags) and aliases of the registered model; empty when it is absent."""
    try:
        aliases = dict(client.get_registered_model(name).aliases)
    except MlflowException:
        return {"aliases": {}, "versions": {}}
    versions = {
        int(v.version): {"stage": v.current_stage, "tags": dict(v.tags)}
        for v in client.search_model_versions(f"name = '{name}'")
    }
    return {"aliases": {k: int(v) for k, v in aliases.items()}, "versions": versions}


def all_runs(client: MlflowClient) -> list[Run]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000)


def step_runs(client: MlflowClient, parent: Run) -> dict[str, Run]:
    """The runs nested under `parent`, by their `step` tag (each step exactly once)."""
    children = [
        r for r in all_runs(client) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    by_step = {r.data.tags.get("step"): r for r in children}
    assert len(by_step) == len(children), [r.data.tags.get("step") for r in children]
    return by_step


def error_line(result: subprocess.CompletedProcess) -> str:
    """The single `Error: ...` line of a step that failed cleanly (non-zero, no traceback)."""
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-5000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def model_artifacts_dir(client: MlflowClient, version: str) -> Path:
    """Where the files of a registered version live on disk (MLflow 3: the logged model's)."""
    source = client.get_model_version(MODEL, version).source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    return Path(location.removeprefix("file://"))
