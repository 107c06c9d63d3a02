"""steps.challenge and promote's shadow gate, on a real MLflow store and a real SQLite
prediction store: the challenger alias set, refused for the champion, removed; promote refusing
a version without enough requests and realized prices in shadow (saying how many it has), then
promoting it and removing the challenger alias once it has them."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import pytest

from config.settings import Settings
from gateway.store import SHADOW_PREDICTIONS, Store, insert_predictions, prediction_rows
from steps.challenge import challenge, withdraw
from steps.params import ShadowGate
from steps.promote import promote
from steps.registry import move_champion
from steps.tracking import StepError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models.model import ModelInfo
    from sklearn.pipeline import Pipeline

    from steps.params import Params
    from tests.support.mlflow_store import Store as MlflowStore

CHALLENGER = "challenger"


@pytest.fixture
def versions(
    mlflow_store: MlflowStore, small_pipeline: Pipeline, few_listings: pd.DataFrame, model_name
) -> list[ModelInfo]:
    """Versions 1 (the champion) and 2 (evaluated: better) of a model named after the test."""
    registered = [mlflow_store.register(small_pipeline, few_listings, model_name) for _ in "12"]
    move_champion(model_name, "champion", "1")
    mlflow_store.client().set_model_version_tag(model_name, "2", "verdict", "better")
    return registered


def shadowed(settings: Settings, version: str, request_ids: list[str]) -> None:
    """One-row requests priced in shadow by `version` (a request stored again is skipped)."""
    store = Store(settings.prediction_store_url)
    for request_id in request_ids:
        rows = prediction_rows(request_id, "k", "2026-11-02T10:00:00.000Z", version, ["nunoa"],
                               None, [{"price": 5000.0}])  # fmt: skip
        store.run(lambda execute, rows=rows: insert_predictions(execute, rows, SHADOW_PREDICTIONS))
    store.close()


def realized(settings: Settings, request_ids: list[str]) -> None:
    """A realized price for the row of each request."""
    store = Store(settings.prediction_store_url)
    for request_id in request_ids:
        store.run(
            lambda execute, r=request_id: execute(
                "INSERT INTO outcomes (request_id, row_index, price, observed_on, received_at) "
                "VALUES (%s, 0, 5100, '2026-12-01', 'now')",
                (r,),
            )
        )
    store.close()


def test_challenge_sets_the_alias_refuses_the_champion_and_removes_it(
    mlflow_store: MlflowStore, versions: list[ModelInfo], settings: Settings
) -> None:
    name = settings.model_name
    assert challenge(settings, "2") == "2"
    assert mlflow_store.alias(name, CHALLENGER) == "2"
    with pytest.raises(StepError, match=re.escape("version 1 is the champion")):
        challenge(settings, "1")
    assert mlflow_store.alias(name, CHALLENGER) == "2"
    assert withdraw(settings) == "2"
    assert (mlflow_store.alias(name, CHALLENGER), withdraw(settings)) == (None, None)
    off = settings.model_copy(update={"challenger_uri": "none"})
    with pytest.raises(StepError) as refused:
        challenge(off, "2")
    assert str(refused.value) == (
        f"CHALLENGER_URI is none (no challenger of {name}): set it to "
        f"models:/{name}@challenger to serve a challenger"
    )


def test_promote_waits_for_the_shadow_params_yaml_asks_for_then_retires_the_challenger(
    mlflow_store: MlflowStore, versions: list[ModelInfo], settings: Settings, params: Params
) -> None:
    name = settings.model_name
    gated = dataclasses.replace(params, shadow_gate=ShadowGate(min_requests=3, min_outcomes=2))
    challenge(settings, "2")
    shadowed(settings, "2", ["r0", "r1", "r2"])
    realized(settings, ["r0"])

    refused = promote(settings, "2", force=False, params=gated)

    assert (refused.promoted, mlflow_store.alias(name, "champion")) == (False, "1")
    assert refused.reason == (
        "version 2 priced 3 requests in shadow, with 1 realized prices; params.yaml "
        "promotion.shadow requires 3 and 2: make it the challenger (mlflow run . -e challenge "
        "--env-manager local -P model_version=2) and promote it once it has them"
    )
    shadowed(settings, "3", ["r3", "r4"])  # another version's
    realized(settings, ["r3", "r4"])
    shadowed(settings, "2", ["r0", "r1"])  # stored once
    assert promote(settings, "2", force=False, params=gated).promoted is False
    realized(settings, ["r2"])

    promoted = promote(settings, "2", force=False, params=gated)

    assert (promoted.promoted, promoted.reason) == (True, "verdict 'better'")
    assert (mlflow_store.alias(name, "champion"), mlflow_store.alias(name, CHALLENGER)) == (
        "2",
        None,
    )


def test_the_default_gate_and_force_need_no_shadow(
    mlflow_store: MlflowStore, versions: list[ModelInfo], settings: Settings, params: Params
) -> None:
    assert params.shadow_gate == ShadowGate(0, 0)  # params.yaml as committed
    assert promote(settings, "2", force=False, params=params).promoted is True
    gated = dataclasses.replace(params, shadow_gate=ShadowGate(min_requests=1))
    assert promote(settings, "1", force=True, params=gated).reason == "forced"
