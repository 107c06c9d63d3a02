"""The real pipeline steps as subprocesses against throw-away sqlite tracking stores.

Each scenario runs `python -m steps.<step>` exactly as an operator would and reads the outcome
back through `MlflowClient`: runs and their tags/metrics/artifacts, registry versions, tags,
aliases and stages.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.models import Model

from config.settings import PROJECT_DIR
from pyfunc.schema import FEATURE_NAMES
from tests.support.stack import SMALL_SOURCE, run_step, store_env
from tests.support.tracking import (
    MODEL,
    SOURCE,
    STEPS,
    all_runs,
    client_for,
    error_line,
    model_artifacts_dir,
    registry_state,
    step_runs,
)

pytestmark = pytest.mark.integration

PARAMS = yaml.safe_load((PROJECT_DIR / "params.yaml").read_text())


def load_json_artifact(client: MlflowClient, run_id: str, path: str, dst: Path) -> Any:
    dst.mkdir(parents=True, exist_ok=True)
    return json.loads(Path(client.download_artifacts(run_id, path, str(dst))).read_text())


def synthetic_rows(spec: str) -> dict[str, int]:
    """{"train": n, "test": m} of a `synthetic:train_rows=n,test_rows=m` source."""
    options = dict(item.split("=") for item in spec.partition(":")[2].split(","))
    return {"train": int(options["train_rows"]), "test": int(options["test_rows"])}


def no_run_left_running(client: MlflowClient) -> list[str]:
    return [r.info.run_name for r in all_runs(client) if r.info.status == "RUNNING"]


# 1. One main run, inspected.


@dataclass(frozen=True)
class MainRun:
    client: MlflowClient
    parent: Run
    steps: dict[str, Run]


@pytest.fixture(scope="module")
def main_run(trained_store: Path) -> MainRun:
    """The `steps.main --source SMALL_SOURCE` run of the shared trained store."""
    client = client_for(trained_store)
    parents = [r for r in all_runs(client) if r.data.tags.get("step") == "main"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    return MainRun(client, parents[0], step_runs(client, parents[0]))


def test_main_is_one_parent_run_with_the_four_steps_nested(main_run: MainRun) -> None:
    assert sorted(main_run.steps) == sorted(STEPS)
    assert main_run.parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in main_run.parent.data.tags
    for step, run in main_run.steps.items():
        assert run.info.status == "FINISHED", step
        assert run.info.run_name == step
    assert main_run.parent.data.tags["model_version"] == "1"
    assert main_run.parent.data.tags["verdict"] == "no_champion"


def test_ingest_logs_clean_splits_and_a_report_that_adds_up(
    main_run: MainRun, tmp_path: Path
) -> None:
    ingest = main_run.steps["ingest"]
    client, run_id = main_run.client, ingest.info.run_id

    assert sorted(a.path for a in client.list_artifacts(run_id, "clean")) == [
        "clean/test.parquet",
        "clean/train.parquet",
    ]
    rows = synthetic_rows(SMALL_SOURCE)
    assert ingest.data.tags["source"] == (
        f"synthetic data (variant=realistic, seed=42, train_rows={rows['train']}, "
        f"test_rows={rows['test']})"
    )
    report = load_json_artifact(client, run_id, "ingest_report.json", tmp_path)
    assert sorted(report) == ["test", "train"]
    assert report["train"]["rows_read"] == rows["train"]
    assert report["test"]["rows_read"] == rows["test"]
    metrics = ingest.data.metrics
    for split, counts in report.items():
        assert counts["rows_read"] == counts["rows_kept"] + sum(counts["dropped"].values()), split
        assert counts["dropped"], f"{split}: synthetic data always has dirty rows"
        assert metrics[f"{split}_rows_read"] == counts["rows_read"]
        assert metrics[f"{split}_rows_kept"] == counts["rows_kept"]
        for reason, count in counts["dropped"].items():
            assert metrics[f"{split}_dropped_{reason}"] == count
        frame = pd.read_parquet(
            client.download_artifacts(run_id, f"clean/{split}.parquet", str(tmp_path))
        )
        assert len(frame) == counts["rows_kept"]
        assert frame.notna().all().all()


def test_train_logs_cv_mae_and_the_model_with_signature_and_input_example(
    main_run: MainRun,
) -> None:
    train = main_run.steps["train"]
    assert train.data.metrics["cv_mae"] > 0
    assert train.data.tags["ingest_run_id"] == main_run.steps["ingest"].info.run_id
    assert train.data.tags["model_version"] == "1"

    version = main_run.client.get_model_version(MODEL, "1")
    assert version.run_id == train.info.run_id
    files = model_artifacts_dir(main_run.client, "1")
    info = Model.load(files / "MLmodel")
    # No input schema: MLflow hands the columns to the model's validator as sent (pyfunc/model.py)
    assert info.signature is not None and info.signature.inputs is None
    assert {"price", "outside_training_range"} <= {c.name for c in info.signature.outputs.inputs}
    assert [p.name for p in info.signature.params.params] == [
        "on_unknown_category",
        "on_invalid_row",
    ]
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    example = pd.read_json(files / "input_example.json", orient="split")
    assert list(example.columns) == list(FEATURE_NAMES)
    assert len(example) >= 1
    stored = info.flavors["python_function"]["config"]["interval"]
    logged = {k: float(v) for k, v in train.data.params.items() if k.startswith("interval_")}
    assert stored["coverage"] == logged["interval_coverage"] == PARAMS["interval"]["coverage"]
    assert stored["log_low"] == pytest.approx(logged["interval_log_low"], abs=1e-6)
    assert stored["log_high"] == pytest.approx(logged["interval_log_high"], abs=1e-6)
    assert stored["log_low"] < 0 < stored["log_high"]


def test_version_is_tagged_with_test_metrics_and_becomes_champion(main_run: MainRun) -> None:
    version = main_run.client.get_model_version(MODEL, "1")
    tags = version.tags
    for name in ("test_mae", "test_rmse", "test_mape", "test_r2"):
        assert math.isfinite(float(tags[name])), name
        assert float(tags[name]) == pytest.approx(
            main_run.steps["evaluate"].data.metrics[name], rel=1e-5
        )
    assert 0 < float(tags["test_r2"]) <= 1
    assert 0.5 < float(tags["test_interval_coverage"]) < 1
    assert 0 < float(tags["test_interval_width"]) < 2
    sectors = [k for k in tags if k.startswith("test_interval_coverage_")]
    assert "test_interval_coverage_las_condes" in sectors and len(sectors) >= 3
    evaluate = main_run.steps["evaluate"].info.run_id
    plots = {a.path for a in main_run.client.list_artifacts(evaluate, "plots")}
    assert "plots/intervals_by_sector.png" in plots
    assert tags["verdict"] == "no_champion"
    assert str(main_run.client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert version.current_stage == "Production"
    assert main_run.steps["promote"].data.tags["promoted"] == "true"


# 2. The gate and the rollback.


@dataclass(frozen=True)
class GateScenario:
    workdir: Path
    env: dict[str, str]
    client: MlflowClient
    results: dict[str, subprocess.CompletedProcess]
    states: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> GateScenario:
    """default preset (champion v1), notebook (v2, refused), notebook forced (v3), rollback."""
    workdir = tmp_path_factory.mktemp("gate")
    env, client = store_env(workdir), client_for(workdir)
    commands = {
        "first": ("steps.main", "--source", SOURCE),
        "worse": ("steps.main", "--source", SOURCE, "--preset", "notebook"),
        "forced": (
            "steps.main",
            "--source",
            SOURCE,
            "--preset",
            "notebook",
            "--force-promote",
            "true",
        ),
        "rollback": ("steps.rollback",),
    }
    results, states = {}, {}
    for name, command in commands.items():
        results[name] = run_step(*command, env=env, cwd=workdir)
        states[name] = registry_state(client)
    return GateScenario(workdir, env, client, results, states)


def test_first_run_makes_the_default_model_champion(gate: GateScenario) -> None:
    state = gate.states["first"]
    assert state["aliases"] == {"champion": 1}
    assert state["versions"][1]["stage"] == "Production"
    assert (
        gate.results["first"].stdout.splitlines()[-1].startswith(f"{MODEL}@champion -> version 1 ")
    )


def test_worse_model_is_not_promoted(gate: GateScenario) -> None:
    state = gate.states["worse"]
    assert state["aliases"] == {"champion": 1}
    tags = state["versions"][2]["tags"]
    assert tags["verdict"] == "worse"
    assert tags["champion_version"] == "1"
    champion_tags = gate.states["first"]["versions"][1]["tags"]
    # The champion was scored again on the same rows: its MAE there is its own test MAE.
    assert float(tags["champion_test_mae"]) == pytest.approx(
        float(champion_tags["test_mae"]), rel=1e-4
    )
    tolerance = PARAMS["promotion"]["tolerance"]
    assert float(tags["test_mae"]) > float(tags["champion_test_mae"]) * (1 + tolerance)
    assert tags["test_rows"] == champion_tags["test_rows"]
    assert state["versions"][2]["stage"] == "None"
    assert state["versions"][1]["stage"] == "Production"
    output = gate.results["worse"].stdout
    assert "version 2: verdict worse" in output
    assert "version 2 NOT promoted (verdict 'worse'" in output
    assert "champion unchanged" in output


def test_forced_promotion_keeps_the_old_champion_as_previous(gate: GateScenario) -> None:
    state = gate.states["forced"]
    assert state["aliases"] == {"champion": 3, "previous-champion": 1}
    assert state["versions"][3]["tags"]["verdict"] == "worse"
    assert "promoted_at" in state["versions"][3]["tags"]
    assert state["versions"][3]["stage"] == "Production"
    assert state["versions"][1]["stage"] == "Archived"
    assert (
        gate.results["forced"]
        .stdout.splitlines()[-1]
        .startswith(f"{MODEL}@champion -> version 3 (forced, was version 1)")
    )


def test_rollback_restores_the_old_champion_and_swaps_the_aliases(gate: GateScenario) -> None:
    state = gate.states["rollback"]
    assert state["aliases"] == {"champion": 1, "previous-champion": 3}
    assert state["versions"][1]["stage"] == "Production"
    assert state["versions"][3]["stage"] == "Archived"
    assert sorted(state["versions"]) == [1, 2, 3]
    assert (
        gate.results["rollback"]
        .stdout.strip()
        .startswith(f"{MODEL}@champion -> version 1 (rollback, was version 3)")
    )


def test_promoting_the_champion_again_keeps_its_previous_champion(gate: GateScenario) -> None:
    before = registry_state(gate.client)
    assert before["aliases"] == {"champion": 1, "previous-champion": 3}

    result = run_step(
        "steps.promote", "--model-version", "1", "--force", "true", env=gate.env, cwd=gate.workdir
    )

    assert registry_state(gate.client)["aliases"] == before["aliases"]
    assert result.stdout.strip().startswith(f"{MODEL}@champion -> version 1 (forced)")


def test_evaluating_the_champion_does_not_compare_it_with_itself(gate: GateScenario) -> None:
    run_step("steps.evaluate", "--model-version", "1", env=gate.env, cwd=gate.workdir)

    tags = gate.client.get_model_version(MODEL, "1").tags
    assert tags.get("champion_version") != "1", tags
    assert tags["verdict"] == "no_champion"


# 3. Failures change nothing.


@pytest.fixture(scope="module")
def generated_csvs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.csv and test.csv written by `steps.generate` (1500 and 500 rows)."""
    folder = tmp_path_factory.mktemp("generated") / "data"
    workdir = folder.parent
    run_step(
        "steps.generate",
        "--out",
        str(folder),
        "--train-rows",
        "1500",
        "--test-rows",
        "500",
        env=store_env(workdir),
        cwd=workdir,
    )
    return folder


def csv_copy(
    generated: Path, folder: Path, change: Callable[[pd.DataFrame], pd.DataFrame] | None = None
) -> Path:
    """A copy of the generated CSVs in `folder`, with `change` applied to train.csv."""
    folder.mkdir(parents=True)
    shutil.copy(generated / "test.csv", folder / "test.csv")
    train = pd.read_csv(generated / "train.csv")
    (change(train) if change else train).to_csv(folder / "train.csv", index=False)
    return folder


def _text_in_net_area(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({"net_area": object})
    frame.loc[7, "net_area"] = "about 120"
    return frame


def _missing_folder(tmp: Path, generated: Path) -> tuple[list[str], str]:
    return ["steps.main", "--source", str(tmp / "nowhere")], (
        f"data folder {tmp / 'nowhere'} does not exist"
    )


def _missing_column(tmp: Path, generated: Path) -> tuple[list[str], str]:
    folder = csv_copy(generated, tmp / "no-bathrooms", lambda f: f.drop(columns="n_bathroom"))
    return ["steps.main", "--source", str(folder)], (
        "[train]: Invalid input (n_bathroom): n_bathroom is a required column; found: "
    )


def _text_column(tmp: Path, generated: Path) -> tuple[list[str], str]:
    folder = csv_copy(generated, tmp / "text", _text_in_net_area)
    return ["steps.main", "--source", str(folder)], (
        "[train]: Invalid input (net_area): net_area must be a number (row 7, got str 'about 120')"
    )


def _unknown_preset(tmp: Path, generated: Path) -> tuple[list[str], str]:
    return ["steps.main", "--source", SOURCE, "--preset", "nope"], (
        "unknown preset 'nope'; params.yaml defines: notebook, default"
    )


def _missing_table(tmp: Path, generated: Path) -> tuple[list[str], str]:
    database = tmp / "listings.db"
    with sqlite3.connect(database) as connection:
        for split in ("train", "test"):
            pd.read_csv(generated / f"{split}.csv").to_sql(split, connection, index=False)
    return ["steps.main", "--source", f"sqlite:///{database}", "--train", "listings"], (
        f"table 'listings' not found in sqlite:///{database} (tables there: test, train)"
    )


def _unknown_version(tmp: Path, generated: Path) -> tuple[list[str], str]:
    return ["steps.promote", "--model-version", "999"], f"model '{MODEL}' has no version '999'"


FAILURES = {
    "missing_csv_folder": _missing_folder,
    "csv_without_a_column": _missing_column,
    "text_in_a_numeric_column": _text_column,
    "unknown_preset": _unknown_preset,
    "missing_sqlite_table": _missing_table,
    "promote_unknown_version": _unknown_version,
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failure_is_one_error_line_and_leaves_the_registry_untouched(
    case: str, gate: GateScenario, generated_csvs: Path, tmp_path: Path
) -> None:
    args, expected = FAILURES[case](tmp_path, generated_csvs)
    before = registry_state(gate.client)

    result = run_step(*args, env=gate.env, cwd=gate.workdir, check=False)

    assert expected in error_line(result)
    assert registry_state(gate.client) == before
    assert before["aliases"]["champion"] == 1
    assert no_run_left_running(gate.client) == []


def test_a_model_that_cannot_be_loaded_is_never_promoted(gate: GateScenario) -> None:
    champion_run = gate.client.get_run(gate.client.get_model_version(MODEL, "1").run_id)
    trained = run_step(
        "steps.train",
        "--ingest-run-id",
        champion_run.data.tags["ingest_run_id"],
        "--preset",
        "notebook",
        env=gate.env,
        cwd=gate.workdir,
    )
    version = trained.stdout.strip().rsplit(" ", 1)[-1]
    files = model_artifacts_dir(gate.client, version)
    assert files.is_relative_to(gate.workdir) and (files / "MLmodel").is_file()
    shutil.rmtree(files)
    before = registry_state(gate.client)

    result = run_step(
        "steps.promote",
        "--model-version",
        version,
        "--force",
        "true",
        env=gate.env,
        cwd=gate.workdir,
        check=False,
    )

    line = error_line(result)
    assert line.startswith(f"Error: models:/{MODEL}/{version} cannot be loaded")
    assert line.endswith("the champion is unchanged")
    assert registry_state(gate.client) == before
    assert before["aliases"]["champion"] == 1


# 4. The client's CSV files.


def test_folder_with_the_clients_two_csvs_is_trained_and_promoted(
    generated_csvs: Path, tmp_path: Path
) -> None:
    env, client = store_env(tmp_path), client_for(tmp_path)

    result = run_step(
        "steps.main", "--source", str(generated_csvs), "--preset", "notebook", env=env, cwd=tmp_path
    )

    assert "version 1: verdict no_champion" in result.stdout
    assert registry_state(client)["aliases"] == {"champion": 1}
    ingest = next(r for r in all_runs(client) if r.data.tags.get("step") == "ingest")
    assert ingest.data.tags["source"] == (
        f"CSV folder {generated_csvs} (train=train.csv, test=test.csv)"
    )
    assert ingest.data.metrics["train_rows_read"] == 1500
    assert ingest.data.metrics["test_rows_read"] == 500


def test_single_split_source_is_split_by_params_test_size(
    generated_csvs: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "only-train"
    folder.mkdir()
    shutil.copy(generated_csvs / "train.csv", folder / "train.csv")
    env, client = store_env(tmp_path), client_for(tmp_path)

    run_step("steps.ingest", "--source", str(folder), "--test", "", env=env, cwd=tmp_path)

    (ingest,) = all_runs(client)
    metrics, test_size = ingest.data.metrics, PARAMS["split"]["test_size"]
    assert ingest.data.params["test"] == ""
    assert metrics["train_rows_read"] + metrics["test_rows_read"] == 1500
    assert metrics["test_rows_read"] == math.ceil(test_size * 1500)
    kept = metrics["train_rows_kept"] + metrics["test_rows_kept"]
    assert metrics["test_rows_kept"] / kept == pytest.approx(test_size, abs=0.02)
    assert [a.path for a in client.list_artifacts(ingest.info.run_id, "clean")] == [
        "clean/test.parquet",
        "clean/train.parquet",
    ]
