"""The imports of config/, pyfunc/, steps/, serving/ and gateway/: no cycle among our modules,
every third-party package they import is declared in pyproject.toml, and the layers.

Read from the source with `ast` (tests/support/imports.py: nothing is imported); an import
under `if TYPE_CHECKING:` is left out, an import inside a function is counted.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from graphlib import CycleError, TopologicalSorter
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.support.imports import import_graph, imported_names, module_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "pyfunc", "steps", "serving", "gateway")
DEV_EXTRA = "dev"  # test tools: the packages may not import them


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        return error.args[1]
    return None


def third_party_imports(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level names of the packages imported from outside the standard library and our own
    packages, each with the modules importing it."""
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for name in imported_names(path):
                top = name.partition(".")[0]
                if top not in (*sys.stdlib_module_names, *packages, "__future__"):
                    found.setdefault(top, set()).add(module_name(path, root))
    return found


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared_distributions(pyproject: Path) -> set[str]:
    """Distributions named in [project] dependencies and in every extra but the dev one."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = [
        deps
        for extra, deps in project.get("optional-dependencies", {}).items()
        if extra != DEV_EXTRA
    ]
    requirements = [r for deps in (project["dependencies"], *extras) for r in deps]
    return {normalized(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}


def test_our_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph(ROOT, PACKAGES)

    assert {"steps.batch_score", "steps.registry", "gateway.app"} <= set(graph)
    assert "steps.spark_score" in graph["steps.batch_score"]  # a lazy import is counted
    assert import_cycle(graph) is None


def test_a_cycle_is_found_through_a_lazy_import_but_not_through_type_checking(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import B\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\nB = 1\n"
    )
    (package / "c.py").write_text("from pkg import d\n")
    (package / "d.py").write_text("def run():\n    import pkg.c\n")

    graph = import_graph(tmp_path, ("pkg",))

    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg", "pkg.b"},
        "pkg.b": set(),
        "pkg.c": {"pkg", "pkg.d"},
        "pkg.d": {"pkg", "pkg.c"},
    }
    assert sorted(set(import_cycle(graph))) == ["pkg.c", "pkg.d"]


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = declared_distributions(ROOT / "pyproject.toml")
    distributions = packages_distributions()  # import name -> installed distribution(s)
    imports = third_party_imports(ROOT, PACKAGES)

    assert {"sklearn", "yaml", "joblib", "threadpoolctl"} <= set(imports)
    undeclared = {
        name: sorted(modules)
        for name, modules in imports.items()
        if not declared & {normalized(d) for d in distributions.get(name, [name])}
    }
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("scikit-learn>=1.5,<2", "scikit-learn"),
        ("psycopg[binary]>=3.1,<4", "psycopg"),
        ("category_encoders>=2.6,<3", "category-encoders"),
        ("PyYAML", "pyyaml"),
    ],
)
def test_declared_names_are_normalized(tmp_path: Path, requirement: str, expected: str) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        f'[project]\ndependencies = ["{requirement}"]\n'
        '[project.optional-dependencies]\ndev = ["pytest"]\n'
    )

    assert declared_distributions(pyproject) == {expected}


def test_test_modules_share_helpers_only_through_tests_support() -> None:
    borrowing = re.compile(r"^\s*(?:from|import) tests\.(?:unit|integration)\b", re.MULTILINE)
    borrowers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if borrowing.search(path.read_text())
    ]

    assert borrowers == []


# Each package and the packages of ours it may import: the layers point one way, down to the
# model. The gateway runs without pandas or MLflow, so it may not import the pipeline or the
# serving processes; the model imports nothing of ours, so a logged version carries no more.
ALLOWED = {
    "pyfunc": set(),
    "config": set(),
    "steps": {"pyfunc", "config"},
    "serving": {"pyfunc", "config", "steps"},
    "gateway": {"pyfunc", "config"},
}


def crossings(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    """Each import of `graph` from one package into another it may not use, as `a -> b`."""
    return sorted(
        f"{module} -> {name}"
        for module, names in graph.items()
        for name in names
        if (top := name.partition(".")[0]) != module.partition(".")[0]
        and top not in allowed[module.partition(".")[0]]
    )


def test_every_package_imports_only_the_layers_below_it() -> None:
    graph = import_graph(ROOT, PACKAGES)

    assert set(ALLOWED) == set(PACKAGES)
    assert crossings(graph, ALLOWED) == []


def test_an_import_of_the_controller_steps_gateway_or_config_by_the_model_is_found(
    tmp_path: Path,
) -> None:
    pyfunc = tmp_path / "pyfunc"
    pyfunc.mkdir()
    (pyfunc / "__init__.py").write_text("")
    (pyfunc / "model.py").write_text("def check():\n    from serving.controller import run\n")
    (pyfunc / "drift.py").write_text("import steps.promote\nimport gateway\nimport config\n")
    for package in ("serving", "steps", "gateway", "config"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "serving" / "controller.py").write_text("")
    (tmp_path / "steps" / "promote.py").write_text("")

    graph = import_graph(tmp_path, ("pyfunc", "serving", "steps", "gateway", "config"))

    assert crossings(graph, ALLOWED) == [
        "pyfunc.drift -> config",
        "pyfunc.drift -> gateway",
        "pyfunc.drift -> steps",
        "pyfunc.drift -> steps.promote",
        "pyfunc.model -> serving",
        "pyfunc.model -> serving.controller",
    ]


def test_the_rollout_controller_imports_no_model_library() -> None:
    """The controller runs for weeks between rollouts: the model's libraries, MLflow and pandas
    (and the memory they hold) belong to its checks, which run in processes of their own."""
    model_libraries = (
        "sklearn",
        "treelite",
        "category_encoders",
        "matplotlib",
        "pyfunc.model",
        "mlflow",
        "pandas",
        "numpy",
    )
    probe = (
        "import sys, serving.controller; "
        f"print([m for m in {model_libraries!r} if m in sys.modules])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert loaded.strip() == "[]"
