"""The controller's checks of a version, each in a process of its own: the model it loads (and
the data an evaluation reads) is given back to the system when the check ends, so the
controller holds no model between rollouts."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from config.settings import Settings
from serving.servers import Canary, canary
from steps.params import Params

T = TypeVar("T")


def in_child(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in a new Python process (spawned: nothing of this one is copied);
    what it raises is raised here."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def checked_canary(uri: str, model_path: str) -> Canary:
    """The checks of promote on the local copy of `uri` (package versions, load, its input
    example priced), then the canary every server must price as it does."""
    from steps.promote import check_loadable

    return canary(check_loadable(uri, model_path))


def evaluate_against(version: str, against: str, params: Params, settings: Settings) -> None:
    """Evaluate `version` of MODEL_NAME against the served version `against`: tags its verdict
    (this writes a run and tags: with read-only credentials it fails, and the version is
    refused)."""
    from steps.evaluate import run_evaluate
    from steps.tracking import configure

    served = settings.model_copy(update={"candidate_model_name": settings.model_name})
    configure(served)
    run_evaluate(version, "", params, served, against=against)
