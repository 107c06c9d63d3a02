"""The lock file (uv.lock) and the requirements files exported from it, read as data."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = ROOT / "uv.lock"
REQUIREMENTS = ROOT / "requirements"
PROJECT = "property-friends"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, set[str]]:
    """{distribution: versions} a requirements file pins (one per marker it is split on)."""
    found: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            found.setdefault(normalized(match["name"]), set()).add(match["version"])
    return found


def unhashed(path: Path) -> list[str]:
    """The requirements of `path` without a sha256 hash (pip's --require-hashes refuses them)."""
    entries = re.split(r"(?<!\\)\n(?=\S)", path.read_text())
    return [
        entry.partition(" ")[0]
        for entry in entries
        if PIN.match(entry) and not re.search(r"--hash=sha256:[0-9a-f]{64}", entry)
    ]


def export_command(path: Path) -> list[str]:
    """The `uv export ...` command that wrote `path` (its header), without `-o <path>`."""
    line = path.read_text().splitlines()[1]
    command = shlex.split(line.lstrip("# "))
    at = command.index("-o")
    return command[:at] + command[at + 2 :]


def locked_closure(extras: tuple[str, ...] = ()) -> set[str]:
    """Every distribution uv.lock installs for the project with `extras`, markers ignored
    (so a superset on any one platform); the project itself left out."""
    packages: dict[str, list[dict]] = {}
    for package in tomllib.loads(LOCK_FILE.read_text())["package"]:
        packages.setdefault(package["name"], []).append(package)
    seen: set[str] = set()
    todo, visited = [(PROJECT, extras)], set()
    while todo:
        name, wanted = todo.pop()
        visited.add((name, wanted))
        for package in packages[name]:
            deps = list(package.get("dependencies", []))
            for extra in wanted:
                deps += package.get("optional-dependencies", {}).get(extra, [])
            for dep in deps:
                seen.add(dep["name"])
                key = (dep["name"], tuple(dep.get("extra", ())))
                if key not in visited:
                    todo.append(key)
    return seen - {PROJECT}
