"""A throw-away copy of the project where documented commands run as a user types them.

The copy has the project's files, a `.venv` made of links to the running virtualenv (so
`source .venv/bin/activate` and the Makefile's `.venv/bin/...` work, and `make` never
reinstalls), its own tracking store and state, and a small-budget `params.yaml` (few trees,
two CV folds): the commands are under test, not the model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from config.settings import PROJECT_DIR
from tests.support.processes import free_port, subprocess_env

PROJECT_FILES = (
    ".env.example",
    "MLproject",
    "Makefile",
    "README.md",
    "conda.yaml",
    "params.yaml",
    "pyproject.toml",
    "python_env.yaml",
    "uv.lock",
)
PROJECT_FOLDERS = (
    "config",
    "docker",
    "gateway",
    "pyfunc",
    "requirements",
    "serving",
    "steps",
    "tests",
)
IGNORED = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".env")
OWN_VARIABLES = ("GATEWAY_", "MODEL_", "MLFLOW_", "STATE_DIR", "PG")
SMALL_BUDGET = {"n_estimators": 20, "max_iter": 30}


def small_params(params: dict) -> dict:
    """`params` with two CV folds, two search candidates and at most a few dozen trees."""
    params["cv"] = {"folds": 2, "search_iterations": 2}
    params["evaluation"]["importance_rows"] = 200
    for preset in params["presets"].values():
        for candidate in preset["candidates"]:
            for name, cap in SMALL_BUDGET.items():
                if name in candidate["params"]:
                    candidate["params"][name] = [cap]
    return params


def linked_venv(venv: Path) -> None:
    """`venv` as links to the running virtualenv, with the Makefile's install marker fresh."""
    real = Path(sys.prefix)
    venv.mkdir()
    for entry in real.iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()


@dataclass(frozen=True)
class ProjectCopy:
    """The copy's folder and the environment its commands run in."""

    root: Path
    env: dict[str, str]

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`command` as bash runs it in the copy's folder."""
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def make_project_copy(root: Path) -> ProjectCopy:
    """Copy the project into `root` (which must not exist) and prepare its environment."""
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(PROJECT_DIR / name, root / name)
    for name in PROJECT_FOLDERS:
        shutil.copytree(PROJECT_DIR / name, root / name, ignore=IGNORED)
    params = yaml.safe_load((PROJECT_DIR / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(small_params(params), sort_keys=False))
    for name in ("pyproject.toml", "requirements/dev.txt"):  # older than the install marker
        os.utime(root / name, (0, 0))
    linked_venv(root / ".venv")
    env = subprocess_env()
    for name in [n for n in env if n.startswith(OWN_VARIABLES)]:
        del env[name]  # the developer's own endpoints, keys and model
    env.update(
        PYTHONPATH=str(root),
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        MLFLOW_EXPERIMENT_NAME="readme",
        STATE_DIR=str(root / ".run"),
        MODEL_PORT=str(free_port()),
        GATEWAY_PORT=str(free_port()),
        MLFLOW_UI_PORT=str(free_port()),
    )
    copy = ProjectCopy(root, env)
    up_to_date = copy.run("make -q .venv/.installed")
    assert up_to_date.returncode == 0, "make would reinstall the virtualenv of the copy"
    return copy
