"""What the serving processes keep under STATE_DIR: the served-model file the gateway follows,
and the local copy of a version every server of it loads (`serving.checks.local_copy`)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Collection
from pathlib import Path

from config.settings import Settings

MODELS_DIR = "models"  # under STATE_DIR: the local copy of each version served here


def write_info(info: dict, path: Path) -> None:
    """Write atomically, so a reader never sees half a file; `served_since` is now unless
    `info` has one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    served = {"served_since": now, **info}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(served, indent=2))
    partial.replace(path)


def copy_path(info: dict, settings: Settings) -> Path:
    return settings.state_dir / MODELS_DIR / f"{info['name']}-{info['version']}"


def has_copy(info: dict, settings: Settings) -> bool:
    return (copy_path(info, settings) / "MLmodel").is_file()


def prune_copies(settings: Settings, keep: Collection[Path]) -> None:
    """Remove every local copy but those in `keep` (the served version's, the challenger's)."""
    for copy in (settings.state_dir / MODELS_DIR).glob("*"):
        if copy not in keep:
            shutil.rmtree(copy, ignore_errors=True)
