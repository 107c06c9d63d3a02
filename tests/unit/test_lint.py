"""`make lint`, the pre-commit hooks and CI run the same checks."""

from __future__ import annotations

import re

import yaml

from config.settings import PROJECT_DIR


def _lint_recipe() -> list[str]:
    makefile = (PROJECT_DIR / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no lint target"
    return [line.strip().removeprefix("$(BIN)/") for line in recipe.group(1).splitlines()]


def test_every_lint_command_is_a_pre_commit_hook_and_back():
    hooks = yaml.safe_load((PROJECT_DIR / ".pre-commit-config.yaml").read_text())["repos"][0]
    entries = [h["entry"].replace(" --force-exclude", "") for h in hooks["hooks"]]
    tools = [command.split(" .")[0].split(" docker/")[0] for command in _lint_recipe()]
    assert entries == tools


def test_lint_covers_rules_format_types_and_the_dockerfile():
    commands = _lint_recipe()
    assert commands == [
        "ruff check .",
        "ruff format --check .",
        "mypy",
        "hadolint docker/Dockerfile",
    ]


def test_ci_lints_then_runs_the_readme_test_commands():
    ci = (PROJECT_DIR / ".ci" / "run").read_text().splitlines()
    steps = [line for line in ci if line.startswith("make ")]
    assert steps == ["make lint", "make test", "make test-slow", "make test-images"]
    readme = (PROJECT_DIR / "README.md").read_text()
    for step in steps:
        assert f"\n{step} " in readme, f"{step} is not a command of README"
