"""steps.promote and steps.rollback: the gate, the aliases, the stage mirror, broken versions;
the package versions a model was logged with, checked by promote, the model server and the
rollout controller."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from config.errors import UserError
from config.settings import Settings
from serving import serve
from serving.controller import Controller, Processes
from serving.files import MODELS_DIR, copy_path
from serving.servers import Serving
from steps.promote import check_loadable, gate, promote
from steps.registry import PREVIOUS_ALIAS, PRODUCTION_STAGE, model_uri, move_champion
from steps.rollback import rollback
from steps.tracking import StepError

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from sklearn.pipeline import Pipeline

    from steps.params import Params
    from tests.support.mlflow_store import Store

CHAMPION = "champion"


@pytest.mark.parametrize(
    ("tags", "force", "expected"),
    [
        pytest.param({}, True, (True, "forced"), id="forced-unevaluated"),
        pytest.param({"verdict": "worse"}, True, (True, "forced"), id="forced-worse"),
        pytest.param(
            {},
            False,
            (False, "not evaluated: run the evaluate step first (or force)"),
            id="not-evaluated",
        ),
        pytest.param(
            {"verdict": "worse", "test_mae": "2100", "champion_test_mae": "2000"},
            False,
            (False, "verdict 'worse': test MAE 2100 vs champion 2000 on the same rows"),
            id="worse",
        ),
        pytest.param({"verdict": "better"}, False, (True, "verdict 'better'"), id="better"),
        pytest.param(
            {"verdict": "within_tolerance"},
            False,
            (True, "verdict 'within_tolerance'"),
            id="within-tolerance",
        ),
        pytest.param(
            {"verdict": "no_champion"}, False, (True, "verdict 'no_champion'"), id="no-champion"
        ),
        pytest.param(
            {"verdict": "splendid"},
            False,
            (False, "verdict 'splendid': test MAE None vs champion None on the same rows"),
            id="unknown-verdict",
        ),
    ],
)
def test_gate(tags: dict[str, str], force: bool, expected: tuple[bool, str]) -> None:
    assert gate(tags, force) == expected


@pytest.fixture
def versions(
    mlflow_store: Store, small_pipeline: Pipeline, few_listings: pd.DataFrame, model_name: str
) -> list[ModelInfo]:
    """Versions 1 and 2 of a model named after the test; no alias, no stage."""
    return [mlflow_store.register(small_pipeline, few_listings, model_name) for _ in range(2)]


def test_move_champion_sets_both_aliases_and_mirrors_the_stage(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings
) -> None:
    client, name = mlflow_store.client(), settings.model_name

    first = move_champion(settings.model_name, CHAMPION, "1")

    assert first is None
    assert (mlflow_store.alias(name, CHAMPION), mlflow_store.alias(name, PREVIOUS_ALIAS)) == (
        "1",
        None,
    )
    assert mlflow_store.stages(name) == {"1": PRODUCTION_STAGE, "2": "None"}

    second = move_champion(settings.model_name, CHAMPION, "2")

    assert str(second) == "1"
    assert (mlflow_store.alias(name, CHAMPION), mlflow_store.alias(name, PREVIOUS_ALIAS)) == (
        "2",
        "1",
    )
    assert mlflow_store.stages(name) == {"1": "Archived", "2": PRODUCTION_STAGE}
    for version in ("1", "2"):
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00",
            client.get_model_version(name, version).tags["promoted_at"],
        )


def test_promote_refuses_an_unevaluated_version_and_leaves_the_aliases(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings
) -> None:
    name = settings.model_name
    move_champion(settings.model_name, CHAMPION, "1")

    result = promote(settings, "2", force=False)

    assert (result.version, result.promoted, result.reason, result.previous) == (
        "2",
        False,
        "not evaluated: run the evaluate step first (or force)",
        None,
    )
    assert (mlflow_store.alias(name, CHAMPION), mlflow_store.alias(name, PREVIOUS_ALIAS)) == (
        "1",
        None,
    )
    assert mlflow_store.stages(name) == {"1": PRODUCTION_STAGE, "2": "None"}


def test_promote_refuses_a_worse_version(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings
) -> None:
    client, name = mlflow_store.client(), settings.model_name
    move_champion(settings.model_name, CHAMPION, "1")
    for key, value in {"verdict": "worse", "test_mae": "2100", "champion_test_mae": "2000"}.items():
        client.set_model_version_tag(name, "2", key, value)

    result = promote(settings, "2", force=False)

    assert (result.promoted, result.reason) == (
        False,
        "verdict 'worse': test MAE 2100 vs champion 2000 on the same rows",
    )
    assert mlflow_store.alias(name, CHAMPION) == "1"


def test_promote_moves_the_champion_for_a_passing_verdict(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings
) -> None:
    client, name = mlflow_store.client(), settings.model_name
    move_champion(settings.model_name, CHAMPION, "1")
    client.set_model_version_tag(name, "2", "verdict", "within_tolerance")

    result = promote(settings, "2", force=False)

    assert (result.version, result.promoted, result.reason, str(result.previous)) == (
        "2",
        True,
        "verdict 'within_tolerance'",
        "1",
    )
    assert (mlflow_store.alias(name, CHAMPION), mlflow_store.alias(name, PREVIOUS_ALIAS)) == (
        "2",
        "1",
    )


def test_promote_names_a_version_that_does_not_exist(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings
) -> None:
    with pytest.raises(match=re.escape(f"model {settings.model_name!r} has no version '9'")):
        promote(settings, "9", force=True)


def test_a_version_without_its_files_is_never_promoted(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings
) -> None:
    name = settings.model_name
    move_champion(settings.model_name, CHAMPION, "1")
    check_loadable(model_uri(name, 1))
    mlflow_store.delete_model_files(versions[1])
    uri = model_uri(name, 2)

    with pytest.raises(
        StepError,
        match=rf"^{re.escape(uri)} cannot be loaded or cannot price "
        r"its input example \(.+\); the champion is unchanged$",
    ):
        check_loadable(uri)
    with pytest.raises(StepError, match="the champion is unchanged"):
        promote(settings, "2", force=True)

    assert (mlflow_store.alias(name, CHAMPION), mlflow_store.alias(name, PREVIOUS_ALIAS)) == (
        "1",
        None,
    )
    assert mlflow_store.stages(name) == {"1": PRODUCTION_STAGE, "2": "None"}


def test_a_version_logged_with_other_package_versions_is_refused_in_one_line(
    mlflow_store: Store,
    versions: list[ModelInfo],
    settings: Settings,
    params: Params,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, installed = settings.model_name, metadata.version("scikit-learn")
    move_champion(settings.model_name, CHAMPION, "1")
    requirements = mlflow_store.model_files(versions[1]) / "requirements.txt"
    logged = requirements.read_text()
    assert f"scikit-learn=={installed}\n" in logged
    requirements.write_text(logged.replace(f"scikit-learn=={installed}", "scikit-learn==1.5.0"))
    uri = model_uri(name, 2)
    message = (
        f"{uri} was logged with scikit-learn==1.5.0 (installed: {installed}): serve it from an "
        "image built from the lock file it was trained with, or train it again here"
    )

    with pytest.raises(UserError) as refused:
        check_loadable(uri)
    assert str(refused.value) == message
    with pytest.raises(UserError, match=re.escape(message)):
        promote(settings, "2", force=True)
    assert mlflow_store.alias(name, CHAMPION) == "1"
    check_loadable(model_uri(name, 1))  # its twin with the logged versions loads

    store = mlflow_store.uri
    info = tmp_path / "served-model.json"
    env = {"MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store}
    started = CliRunner().invoke(
        serve.main, [], env={**env, "MODEL_URI": uri, "MODEL_INFO_PATH": str(info)}
    )
    assert (started.exit_code, started.output.splitlines()[-1]) == (1, f"Error: {message}")
    assert "Traceback" not in started.output

    metrics = CollectorRegistry()
    settings = Settings.from_env(
        {"MLFLOW_TRACKING_URI": store, "MODEL_URI": uri, "STATE_DIR": str(tmp_path)}
    )
    controller = Controller(
        settings, params, Processes(settings, "127.0.0.1", "127.0.0.1"), metrics
    )
    with caplog.at_level(logging.WARNING, logger="serving.controller"):
        controller.poll()
    assert controller.serving is None
    assert metrics.get_sample_value("model_rollouts_total", {"result": "refused"}) == 1
    assert f"version 2 refused: {message}; version none keeps serving" in caplog.messages
    assert not info.exists()


def test_rollback_swaps_champion_and_previous_champion(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings
) -> None:
    name = settings.model_name
    move_champion(settings.model_name, CHAMPION, "1")
    move_champion(settings.model_name, CHAMPION, "2")

    result = rollback(settings)

    assert (str(result.version), result.promoted, result.reason, str(result.previous)) == (
        "1",
        True,
        "rollback",
        "2",
    )
    assert (mlflow_store.alias(name, CHAMPION), mlflow_store.alias(name, PREVIOUS_ALIAS)) == (
        "1",
        "2",
    )
    assert mlflow_store.stages(name) == {"1": PRODUCTION_STAGE, "2": "Archived"}


def test_rollback_needs_a_previous_champion(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings
) -> None:
    move_champion(settings.model_name, CHAMPION, "1")

    with pytest.raises(
        StepError,
        match=re.escape(
            f"model {settings.model_name!r} has no 'previous-champion' to roll back to"
        ),
    ):
        rollback(settings)


def test_promoting_the_champion_again_keeps_the_previous_champion(
    mlflow_store: Store, versions: list[ModelInfo], settings: Settings
) -> None:
    name = settings.model_name
    promote(settings, "1", force=True)
    promote(settings, "2", force=True)

    again = promote(settings, "2", force=True)

    assert (mlflow_store.alias(name, CHAMPION), mlflow_store.alias(name, PREVIOUS_ALIAS)) == (
        "2",
        "1",
    )
    assert (again.version, again.promoted, again.previous) == ("2", True, None)


def local_copies(settings: Settings) -> list[Path]:
    """The versions downloaded under STATE_DIR/models."""
    return sorted((settings.state_dir / MODELS_DIR).glob("*"))


class UndoneMidway:
    """An executor during whose first rollout someone moves the alias elsewhere: a mistaken
    promotion undone at once. Records what it was asked to serve and what it published."""

    def __init__(self, undo: Callable[[], None]):
        self.undo: Callable[[], None] | None = undo
        self.tried: list[str] = []
        self.published: list[str] = []

    def adopt(self) -> Serving | None:
        return None

    def serve(
        self, model: Any, info: dict[str, Any], old: Serving | None, check_target: Callable
    ) -> Serving:
        self.tried.append(info["version"])
        check_target()  # servers starting: still the target
        if self.undo is not None:
            self.undo, undo = None, self.undo
            undo()
        check_target()  # before publishing
        self.published.append(info["version"])
        return Serving(info, ())

    def heal(self, serving: Serving, load: Callable) -> Serving:
        return serving


def test_a_rollout_whose_target_moved_back_is_abandoned_and_the_old_version_kept(
    mlflow_store: Store,
    versions: list[ModelInfo],
    settings: Settings,
    params: Params,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, client = settings.model_name, mlflow_store.client()
    move_champion(name, CHAMPION, "1")
    client.set_model_version_tag(name, "2", "verdict", "better")
    executor = UndoneMidway(lambda: client.set_registered_model_alias(name, CHAMPION, "1"))
    metrics = CollectorRegistry()
    controller = Controller(settings, params, executor, metrics)
    controller.serving = Serving({"name": name, "version": "1", "uri": model_uri(name, 1)}, ())
    client.set_registered_model_alias(name, CHAMPION, "2")

    with caplog.at_level(logging.WARNING, logger="serving.controller"):
        controller.poll()
        controller.poll()  # the newest target is the served version: nothing to roll out

    assert (executor.tried, executor.published, controller.serving.version) == (["2"], [], "1")
    assert local_copies(settings) == []  # the abandoned version's copy went with it
    assert metrics.get_sample_value("model_rollouts_total", {"result": "abandoned"}) == 1
    assert metrics.get_sample_value("model_rollouts_total", {"result": "served"}) == 0
    assert caplog.messages == [
        f"version 2 abandoned: models:/{name}@{CHAMPION} resolves to version 1 now; "
        "version 1 keeps serving"
    ]
    client.set_registered_model_alias(name, CHAMPION, "2")  # promoted again, for good
    controller.poll()
    assert (executor.tried, executor.published, controller.serving.version) == (
        ["2", "2"],
        ["2"],
        "2",
    )
    assert local_copies(settings) == [copy_path({"name": name, "version": "2"}, settings)]
