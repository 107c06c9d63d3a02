"""The rollout controller's challenger in shadow, against a real MLflow store: the version
CHALLENGER_URI resolves to is checked (in a process of its own) and served in shadow beside the
served version, stopped when the alias moves to the served version or goes, and abandoned when
it moves while its servers start (the latest intent wins). The executor records what it is
asked to do: the real model server processes are in tests/integration/test_shadow.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry

from config.settings import Settings
from serving.controller import Controller
from serving.files import MODELS_DIR, copy_path
from serving.servers import Serving
from steps.registry import model_uri, move_champion

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models.model import ModelInfo
    from sklearn.pipeline import Pipeline

    from steps.params import Params
    from tests.support.mlflow_store import Store

CHALLENGER = "challenger"


class Recorder:
    """An executor serving versions with no process; `during_start` runs while the
    challenger's servers would start."""

    def __init__(self, during_start: Callable[[], None] | None = None):
        self.during_start = during_start
        self.shadowed: list[str] = []
        self.stopped: list[str] = []

    def adopt(self) -> Serving | None:
        return None

    def adopt_shadow(self) -> Serving | None:
        return None

    def heal(self, serving: Serving, canary_of: Callable) -> Serving:
        return serving

    def serve_shadow(
        self, checked: Any, info: dict[str, Any], check_target: Callable[[], None]
    ) -> Serving:
        check_target()
        if self.during_start is not None:
            self.during_start, during = None, self.during_start
            during()
        check_target()  # before publishing
        self.shadowed.append(info["version"])
        return Serving(info, ())

    def stop_shadow(self, shadow: Serving) -> None:
        self.stopped.append(shadow.version)

    def heal_shadow(self, shadow: Serving, canary_of: Callable) -> Serving:
        return shadow


@pytest.fixture
def versions(
    mlflow_store: Store, small_pipeline: Pipeline, few_listings: pd.DataFrame, model_name: str
) -> list[ModelInfo]:
    """Versions 1 and 2 of a model named after the test; 1 is the champion."""
    registered = [mlflow_store.register(small_pipeline, few_listings, model_name) for _ in "12"]
    move_champion(model_name, "champion", "1")
    return registered


def controller_on(settings: Settings, params: Params, executor: Recorder) -> Controller:
    """A controller serving version 1 (as adopted)."""
    controller = Controller(settings, params, executor, CollectorRegistry())
    name = settings.model_name
    controller.serving = Serving({"name": name, "version": "1", "uri": model_uri(name, 1)}, ())
    return controller


def local_copies(settings: Settings) -> list[Path]:
    return sorted((settings.state_dir / MODELS_DIR).glob("*"))


def test_the_challenger_shadows_until_its_alias_goes_and_the_champion_is_never_shadowed(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings, params: Params
) -> None:
    name, client = settings.model_name, mlflow_store.client()
    executor = Recorder()
    controller = controller_on(settings, params, executor)
    controller.poll()
    assert (executor.shadowed, controller.shadow) == ([], None)  # no alias: no challenger

    client.set_registered_model_alias(name, CHALLENGER, "2")
    controller.poll()
    controller.poll()  # in shadow already: nothing new
    assert (executor.shadowed, controller.shadow.version) == (["2"], "2")
    assert controller.shadow.info["uri"] == model_uri(name, 2)
    assert local_copies(settings) == [copy_path({"name": name, "version": "2"}, settings)]

    client.delete_registered_model_alias(name, CHALLENGER)
    controller.poll()
    assert (executor.stopped, controller.shadow, local_copies(settings)) == (["2"], None, [])

    client.set_registered_model_alias(name, CHALLENGER, "1")  # the served version
    controller.poll()
    assert (executor.shadowed, executor.stopped, controller.shadow) == (["2"], ["2"], None)


def test_a_challenger_whose_alias_moves_while_it_starts_is_abandoned(
    mlflow_store: Store,
    versions: list[ModelInfo],
    settings: Settings,
    params: Params,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, client = settings.model_name, mlflow_store.client()
    executor = Recorder(lambda: client.set_registered_model_alias(name, CHALLENGER, "1"))
    controller = controller_on(settings, params, executor)
    client.set_registered_model_alias(name, CHALLENGER, "2")

    with caplog.at_level(logging.WARNING, logger="serving.controller"):
        controller.poll()
        controller.poll()  # the challenger is the served version now: nothing to shadow

    assert (executor.shadowed, controller.shadow, executor.stopped) == ([], None, [])
    assert caplog.messages == [
        f"challenger version 2 abandoned: models:/{name}@{CHALLENGER} resolves to version 1 now"
    ]
    assert local_copies(settings) == []


def test_no_challenger_when_challenger_uri_is_none(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings, params: Params
) -> None:
    mlflow_store.client().set_registered_model_alias(settings.model_name, CHALLENGER, "2")
    executor = Recorder()
    off = settings.model_copy(update={"challenger_uri": "none"})
    controller = controller_on(off, params, executor)
    controller.poll()
    assert (executor.shadowed, controller.shadow) == ([], None)
