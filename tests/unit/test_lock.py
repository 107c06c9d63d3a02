"""uv.lock pins every dependency; requirements/*.txt, from which `make install` and the images
install, are its exports with hashes. Checked offline: `uv lock --check --offline` reads the
lock's own metadata, and `uv export --frozen` resolves nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lock import (
    LOCK_FILE,
    REQUIREMENTS,
    ROOT,
    export_command,
    locked_closure,
    pins,
    unhashed,
)

UV_INSTALL = f"{sys.executable} -m pip install 'uv>=0.13,<0.14'"
EXPORTS = {"gateway": (), "model": ("model",), "dev": ("dev", "model", "spark")}
# What the gateway never imports, so its image must not install (DESIGN.md: footprint).
HEAVY = {"pandas", "mlflow", "mlflow-skinny", "scikit-learn", "numpy", "scipy", "pyarrow"}


def uv(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    found = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}/usr/bin")
    if found is None:
        pytest.fail(f"uv is missing: install it with {UV_INSTALL}")
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_OFFLINE": "1", "NO_COLOR": "1"}
    return subprocess.run(
        [found, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def body(text: str) -> str:
    """A requirements file without uv's two header lines (which name the output file)."""
    return text.split("\n", 2)[2]


def test_lock_is_in_sync_with_pyproject(tmp_path):
    result = uv("lock", "--check", cwd=ROOT, cache=tmp_path)
    assert result.returncode == 0, f"uv.lock is stale: run `make lock`\n{result.stderr}"


def test_a_dependency_added_to_pyproject_makes_the_lock_stale(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(LOCK_FILE, project)
    pyproject = (ROOT / "pyproject.toml").read_text()
    changed = pyproject.replace('"orjson>=3.9,<4",', '"orjson>=3.9,<4",\n    "six>=1.16",')
    assert changed != pyproject
    (project / "pyproject.toml").write_text(changed)

    result = uv("lock", "--check", cwd=project, cache=tmp_path / "cache")

    assert result.returncode != 0
    assert (project / "uv.lock").read_text() == LOCK_FILE.read_text()


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_each_requirements_file_is_the_export_of_the_lock(tmp_path, name):
    path = REQUIREMENTS / f"{name}.txt"
    command = export_command(path)
    assert command[:4] == ["uv", "export", "--frozen", "--no-emit-project"], command

    result = uv(*command[1:], "--quiet", cwd=ROOT, cache=tmp_path)

    assert result.returncode == 0, result.stderr
    assert body(result.stdout) == body(path.read_text()), f"{path.name} is stale: run `make lock`"
    assert set(pins(path)) == locked_closure(EXPORTS[name])
    assert unhashed(path) == []


def test_the_gateway_installs_none_of_the_model_libraries():
    gateway, model = set(pins(REQUIREMENTS / "gateway.txt")), set(pins(REQUIREMENTS / "model.txt"))
    assert gateway & HEAVY == set()
    assert model >= HEAVY
    assert {"flask", "gunicorn", "prometheus-client", "pydantic-settings"} <= gateway <= model
    # one version of each package across the files (per Python version marker)
    dev = pins(REQUIREMENTS / "dev.txt")
    for name, versions in pins(REQUIREMENTS / "model.txt").items():
        assert dev[name] == versions, name


def test_make_install_and_make_lock_use_the_exported_files():
    makefile = (ROOT / "Makefile").read_text()
    install = re.search(r"^\$\(VENV\)/\.installed:(.*?)\n\n", makefile, re.MULTILINE | re.DOTALL)
    assert install, "no $(VENV)/.installed rule"
    assert "requirements/dev.txt" in install[1].splitlines()[0]  # rebuilt when it changes
    assert "pip install --quiet --require-hashes --no-deps -r requirements/dev.txt" in install[1]
    assert "pip install --quiet --no-deps -e ." in install[1]
    written = {
        match[2]: match[1].split()
        for match in re.finditer(r"\$\(BIN\)/(uv export .*?) -o (requirements/\S+)", makefile)
    }
    assert set(written) == {f"requirements/{name}.txt" for name in EXPORTS}
    for path, command in written.items():
        given = [arg for arg in command if arg != "--quiet"]
        assert given == export_command(ROOT / path), path
