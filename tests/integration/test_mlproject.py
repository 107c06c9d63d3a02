"""MLproject: its entry points run under the real `mlflow run` CLI and match the steps' CLIs."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from pyfunc.settings import PROJECT_DIR
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

pytestmark = pytest.mark.integration

MLPROJECT = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())
ENTRY_POINTS = MLPROJECT["entry_points"]
MODULE = re.compile(r"^python -m (?P<module>[\w.]+)(?:\s|$)")
FLAG_AND_VALUE = re.compile(r"(?P<flag>--[\w-]+)(?:\s+(?P<value>\S+))?")
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def mlflow_run(workdir: Path, env: dict[str, str], entry_point: str,
               **parameters: str) -> subprocess.CompletedProcess:
    """`mlflow run <project> -e entry_point --env-manager local -P k=v ...` from `workdir`."""
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_DIR), "-e", entry_point,
               "--env-manager", "local"]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    return subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True,
                          timeout=600)


def output_of(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


@dataclass(frozen=True)
class ProjectRuns:
    client: MlflowClient
    results: dict[str, subprocess.CompletedProcess]
    states: dict[str, dict[str, Any]]

    def entry_point_run(self, entry_point: str) -> Run:
        """The run `mlflow run -e entry_point` created (one per entry point here)."""
        (run,) = [r for r in all_runs(self.client)
                  if r.data.tags.get("mlflow.project.entryPoint") == entry_point]
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


def test_rollback_with_nothing_to_roll_back_to_fails_with_the_reason(
        project: ProjectRuns) -> None:
    result = project.results["rollback"]
    assert result.returncode != 0, output_of(result)
    assert (f"Error: model '{MODEL}' has no 'previous-champion' to roll back to"
            in result.stderr.splitlines())
    assert "Traceback" not in result.stdout + result.stderr
    assert project.states["rollback"] == project.states["main"]
    assert project.entry_point_run("rollback").info.status == "FAILED"


def test_train_entry_point_alone_ingests_first_and_registers_a_version(
        project: ProjectRuns) -> None:
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


def test_evaluate_entry_point_tags_the_version_against_the_champion(
        project: ProjectRuns) -> None:
    result = project.results["evaluate"]
    assert result.returncode == 0, output_of(result)
    tags = project.states["evaluate"]["versions"][2]["tags"]
    assert tags["champion_version"] == "1"
    assert tags["verdict"] in ("better", "within_tolerance")
    assert f"verdict: {tags['verdict']}" in result.stdout
    for name in ("test_mae", "test_rmse", "test_mape", "test_r2"):
        assert float(tags[name]) == pytest.approx(
            project.entry_point_run("evaluate").data.metrics[name], rel=1e-5)


def test_promote_entry_point_moves_the_champion(project: ProjectRuns) -> None:
    result = project.results["promote"]
    assert result.returncode == 0, output_of(result)
    assert project.states["promote"]["aliases"] == {"champion": 2, "previous-champion": 1}
    assert f"{MODEL}@champion -> version 2 (verdict " in result.stdout
    assert project.entry_point_run("promote").data.tags["promoted"] == "true"


def _click_command(module_name: str) -> click.Command:
    assert importlib.util.find_spec(module_name) is not None, (
        f"MLproject runs `python -m {module_name}`, but there is no module {module_name}")
    command = importlib.import_module(module_name).main
    assert isinstance(command, click.Command), f"{module_name}.main is not a click command"
    return command


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_entry_point_matches_the_click_options_of_its_step(entry_point: str) -> None:
    spec = ENTRY_POINTS[entry_point]
    command_line = " ".join(spec["command"].split())
    parameters = spec.get("parameters", {})
    match = MODULE.match(command_line)
    assert match, f"{entry_point}: command does not start with `python -m <module>`"
    command = _click_command(match["module"])
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
