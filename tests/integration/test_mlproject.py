"""MLproject: its entry points run under the real `mlflow run` CLI and match the steps' CLIs."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from config.settings import PROJECT_DIR
from steps.generate import generate_listings
from tests.support.project import ProjectCopy, make_project_copy
from tests.support.stack import store_env
from tests.support.tracking import (
    MODEL,
    SOURCE,
    STEPS,
    all_runs,
    client_for,
    registry_state,
    step_runs,
)
from tests.support.traffic import write_log

pytestmark = pytest.mark.integration

MLPROJECT = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())
ENTRY_POINTS = MLPROJECT["entry_points"]
MODULE = re.compile(r"^python -m (?P<module>[\w.]+)(?: (?P<job>[a-z]\w*))?(?:\s|$)")
FLAG_AND_VALUE = re.compile(r"(?P<flag>--[\w-]+)(?:\s+(?P<value>\S+))?")
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Entry points with their defaults, in an order where each finds what it needs (a model, a
# champion to roll back from); entry points not named here run last. Only required
# parameters (no default) are given.
DEFAULTS_ORDER = (
    "generate",
    "ingest",
    "main",
    "train",
    "evaluate",
    "promote",
    "rollback",
    "batch_score",
    "monitor",
)
REQUIRED = {"batch_score": {"input": "data/test.csv"}}
MONITORED_ROWS = 500


def mlflow_run(
    workdir: Path, env: dict[str, str], entry_point: str, **parameters: str
) -> subprocess.CompletedProcess:
    """`mlflow run <project> -e entry_point --env-manager local -P k=v ...` from `workdir`."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(PROJECT_DIR),
        "-e",
        entry_point,
        "--env-manager",
        "local",
    ]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    return subprocess.run(
        command, env=env, cwd=workdir, capture_output=True, text=True, timeout=600
    )


def output_of(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


@dataclass(frozen=True)
class ProjectRuns:
    client: MlflowClient
    results: dict[str, subprocess.CompletedProcess]
    states: dict[str, dict[str, Any]]

    def entry_point_run(self, entry_point: str) -> Run:
        """The run `mlflow run -e entry_point` created (one per entry point here)."""
        (run,) = [
            r
            for r in all_runs(self.client)
            if r.data.tags.get("mlflow.project.entryPoint") == entry_point
        ]
        return run


def project_mlruns() -> set[Path]:
    """What the project folder's own mlruns/ holds (a developer's `make run` writes there)."""
    return set((PROJECT_DIR / "mlruns").rglob("*"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> ProjectRuns:
    """main (v1 champion), rollback (nothing to roll back to), train (v2), evaluate, promote."""
    workdir = tmp_path_factory.mktemp("mlproject")
    env, client = store_env(workdir), client_for(workdir)
    scenario = {
        "main": {"source": SOURCE, "preset": "notebook"},
        "rollback": {},
        "train": {"source": SOURCE, "preset": "notebook"},
        "evaluate": {"model_version": "2"},
        "promote": {"model_version": "2"},
    }
    results, states = {}, {}
    before = project_mlruns()
    for entry_point, parameters in scenario.items():
        results[entry_point] = mlflow_run(workdir, env, entry_point, **parameters)
        states[entry_point] = registry_state(client)
    assert project_mlruns() == before, "mlflow run wrote into the project folder"
    return ProjectRuns(client, results, states)


def test_main_entry_point_registers_and_promotes_a_model(project: ProjectRuns) -> None:
    result = project.results["main"]
    assert result.returncode == 0, output_of(result)
    assert project.states["main"]["aliases"] == {"champion": 1}
    assert f"{MODEL}@champion -> version 1 (verdict 'no_champion')" in result.stdout
    run = project.entry_point_run("main")
    assert run.info.status == "FINISHED"
    assert run.data.tags["step"] == "main"
    assert sorted(step_runs(project.client, run)) == sorted(STEPS)


def test_rollback_with_nothing_to_roll_back_to_fails_with_the_reason(project: ProjectRuns) -> None:
    result = project.results["rollback"]
    assert result.returncode != 0, output_of(result)
    assert (
        f"Error: model '{MODEL}' has no 'previous-champion' to roll back to"
        in result.stderr.splitlines()
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert project.states["rollback"] == project.states["main"]
    assert project.entry_point_run("rollback").info.status == "FAILED"


def test_train_entry_point_alone_ingests_first_and_registers_a_version(
    project: ProjectRuns,
) -> None:
    result = project.results["train"]
    assert result.returncode == 0, output_of(result)
    assert f"registered: {MODEL} version 2" in result.stdout
    state = project.states["train"]
    assert sorted(state["versions"]) == [1, 2]
    assert state["aliases"] == {"champion": 1}
    assert "verdict" not in state["versions"][2]["tags"]
    run = project.entry_point_run("train")
    nested = step_runs(project.client, run)
    assert sorted(nested) == ["ingest"]
    assert run.data.tags["ingest_run_id"] == nested["ingest"].info.run_id
    assert run.data.tags["preset"] == "notebook"
    assert project.client.get_model_version(MODEL, "2").run_id == run.info.run_id


def test_evaluate_entry_point_tags_the_version_against_the_champion(project: ProjectRuns) -> None:
    result = project.results["evaluate"]
    assert result.returncode == 0, output_of(result)
    tags = project.states["evaluate"]["versions"][2]["tags"]
    assert tags["champion_version"] == "1"
    assert tags["verdict"] in ("better", "within_tolerance")
    assert f"verdict: {tags['verdict']}" in result.stdout
    for name in ("test_mae", "test_rmse", "test_mape", "test_r2"):
        assert float(tags[name]) == pytest.approx(
            project.entry_point_run("evaluate").data.metrics[name], rel=1e-5
        )


def test_promote_entry_point_moves_the_champion(project: ProjectRuns) -> None:
    result = project.results["promote"]
    assert result.returncode == 0, output_of(result)
    assert project.states["promote"]["aliases"] == {"champion": 2, "previous-champion": 1}
    assert f"{MODEL}@champion -> version 2 (verdict " in result.stdout
    assert project.entry_point_run("promote").data.tags["promoted"] == "true"


def _click_command(module_name: str, job: str | None) -> click.Command:
    """The step's `main`, or the command `job` of its `cli` group (`python -m module job`)."""
    assert importlib.util.find_spec(module_name) is not None, (
        f"MLproject runs `python -m {module_name}`, but there is no module {module_name}"
    )
    module = importlib.import_module(module_name)
    command = module.cli.commands[job] if job else module.main
    assert isinstance(command, click.Command), f"{module_name} {job or 'main'} is not a command"
    return command


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_entry_point_matches_the_click_options_of_its_step(entry_point: str) -> None:
    spec = ENTRY_POINTS[entry_point]
    command_line = " ".join(spec["command"].split())
    parameters = spec.get("parameters", {})
    match = MODULE.match(command_line)
    assert match, f"{entry_point}: command does not start with `python -m <module>`"
    command = _click_command(match["module"], match["job"])
    options = {opt: param for param in command.params for opt in param.opts}
    pairs = FLAG_AND_VALUE.findall(command_line)

    unknown = [flag for flag, _ in pairs if flag not in options]
    assert not unknown, f"{entry_point}: {match['module']} has no option(s) {unknown}"
    assert sorted(PLACEHOLDER.findall(command_line)) == sorted(parameters), entry_point
    for flag, value in pairs:
        name = flag[2:].replace("-", "_")
        assert value == f"{{{name}}}", f"{entry_point}: {flag} should be given {{{name}}}"
        declared = parameters[name]
        if isinstance(declared, dict) and "default" in declared:
            option = options[flag]
            with click.Context(command) as context:  # the step accepts MLproject's default
                option.type.convert(str(declared["default"]), option, context)


def _defaults_cases() -> list:
    names = sorted(ENTRY_POINTS, key=lambda n: (*DEFAULTS_ORDER, n).index(n))
    cases = [pytest.param(name, {}, id=name) for name in names]
    spark = pytest.param(
        "batch_score",
        {"engine": "spark", "output": "spark.parquet"},
        id="batch_score-spark",
    )
    return [*cases, spark]


@pytest.fixture(scope="module")
def defaults_copy(tmp_path_factory: pytest.TempPathFactory) -> ProjectCopy:
    """A project copy whose request log holds recent traffic (for `monitor`)."""
    copy = make_project_copy(tmp_path_factory.mktemp("defaults") / "project")
    log = copy.root / ".run" / "logs" / "requests.jsonl"
    log.parent.mkdir(parents=True)
    write_log(log, [generate_listings(MONITORED_ROWS, seed=3, dirty=False)])
    return copy


def _outcome(copy: ProjectCopy, entry_point: str, given: dict[str, str]) -> None:
    """What an entry point run with its defaults leaves behind, beyond its MLflow run."""
    if entry_point == "generate":
        rows = ENTRY_POINTS["generate"]["parameters"]["train_rows"]["default"]
        assert len(pd.read_csv(copy.root / "data" / "train.csv")) == rows
    elif entry_point == "batch_score":
        scored = pd.read_parquet(copy.root / given.get("output", "predictions.parquet"))
        assert len(scored) == len(pd.read_csv(copy.root / "data" / "test.csv"))
    elif entry_point == "monitor":
        report = json.loads((copy.root / "drift_report.json").read_text())
        assert report["rows"] == MONITORED_ROWS
    elif entry_point == "accuracy":  # no realized price yet: an empty table
        assert json.loads((copy.root / "live_accuracy.json").read_text()) == []


@pytest.mark.parametrize(("entry_point", "extra"), _defaults_cases())
def test_entry_point_runs_with_its_defaults(
    defaults_copy: ProjectCopy, entry_point: str, extra: dict[str, str]
) -> None:
    declared = ENTRY_POINTS[entry_point].get("parameters", {})
    given = {**REQUIRED.get(entry_point, {}), **extra}
    required = [
        n for n, spec in declared.items() if not (isinstance(spec, dict) and "default" in spec)
    ]
    assert sorted(set(required) - set(given)) == [], f"give {entry_point} a value in REQUIRED"
    command = ["mlflow", "run", ".", "-e", entry_point, "--env-manager", "local"]
    for name, value in given.items():
        command += ["-P", f"{name}={value}"]
    result = defaults_copy.run(shlex.join(command))
    assert result.returncode == 0, output_of(result)
    client = MlflowClient(defaults_copy.tracking_uri, defaults_copy.tracking_uri)
    (run, *_) = [
        r for r in all_runs(client) if r.data.tags.get("mlflow.project.entryPoint") == entry_point
    ]
    assert run.info.status == "FINISHED"
    _outcome(defaults_copy, entry_point, given)
