"""steps.registry: URIs, what an alias, stage or number resolves to, one message when absent."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from config.errors import UserError
from steps.registry import (
    alias_version,
    latest_version,
    model_uri,
    move_champion,
    resolve,
    unmet_requirements,
)
from steps.registry_reader import SqlRegistry

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from tests.support.mlflow_store import Store

NAME = "registered"


@pytest.fixture(scope="module")
def registered(mlflow_store: Store, small_pipeline: Pipeline, few_listings: pd.DataFrame) -> str:
    """Versions 1, 2 and 3 of NAME; 2 is the champion (so in stage Production), 1 the previous;
    version 2 carries two test metrics."""
    for _ in range(3):
        mlflow_store.register(small_pipeline, few_listings, NAME)
    move_champion(NAME, "champion", "1")
    move_champion(NAME, "champion", "2")
    client = mlflow_store.client()
    client.set_model_version_tag(NAME, "2", "test_mae", "1234.5")
    client.set_model_version_tag(NAME, "2", "test_r2", "0.75")
    return NAME


@pytest.fixture(params=["mlflow", "tables"])
def resolver(request: pytest.FixtureRequest, mlflow_store: Store) -> Callable[[str], dict]:
    """`steps.registry.resolve` (MLflow's client), or the controller's reader of the store's
    tables: both must say the same (tests/integration/test_registry_reader.py: REST too)."""
    return resolve if request.param == "mlflow" else SqlRegistry(mlflow_store.uri).resolve


@pytest.mark.parametrize(
    ("version", "alias", "expected"),
    [
        ("3", None, "models:/m/3"),
        (3, None, "models:/m/3"),
        (None, "champion", "models:/m@champion"),
    ],
)
def test_model_uri(version, alias, expected: str) -> None:
    assert model_uri("m", version, alias=alias) == expected


@pytest.mark.parametrize(
    ("uri", "version", "alias"),
    [
        (f"models:/{NAME}@champion", "2", "champion"),
        (f"models:/{NAME}@previous-champion", "1", "previous-champion"),
        (f"models:/{NAME}/Production", "2", "Production"),
        (f"models:/{NAME}/3", "3", "3"),
    ],
)
def test_resolve_pins_an_alias_a_stage_or_a_number(
    registered: str, resolver: Callable[[str], dict], uri: str, version: str, alias: str
) -> None:
    info = resolver(uri)

    assert (info["name"], info["version"], info["alias"], info["uri"]) == (
        NAME,
        version,
        alias,
        f"models:/{NAME}/{version}",
    )
    assert info["metrics"] == ({"test_mae": 1234.5, "test_r2": 0.75} if version == "2" else {})
    assert re.fullmatch(r"[0-9a-f]{32}", info["run_id"])


def test_a_uri_outside_the_registry_is_served_as_it_is(resolver: Callable[[str], dict]) -> None:
    assert resolver("runs:/abc/model") == {
        "name": None,
        "version": "unregistered",
        "alias": None,
        "uri": "runs:/abc/model",
        "run_id": None,
        "metrics": {},
    }


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"models:/{NAME}@staging", f"model '{NAME}' has no alias 'staging'"),
        (f"models:/{NAME}/9", f"model '{NAME}' has no version '9'"),
        (f"models:/{NAME}/Staging", f"model '{NAME}' has no version in stage 'Staging'"),
        (f"models:/{NAME}/Nowhere", f"model '{NAME}' has no version in stage 'Nowhere'"),
        ("models:/nothing@champion", "model 'nothing' has no alias 'champion'"),
        ("models:/nothing/1", "model 'nothing' has no version '1'"),
    ],
)
def test_what_does_not_exist_is_named_in_one_message(
    registered: str, resolver: Callable[[str], dict], uri: str, message: str
) -> None:
    with pytest.raises(UserError) as error:
        resolver(uri)

    assert str(error.value) == f"cannot resolve {uri}: {message}"


def test_alias_version_and_latest_version(registered: str) -> None:
    assert (alias_version(NAME, "champion"), alias_version(NAME, "previous-champion")) == ("2", "1")
    assert alias_version(NAME, "staging") is None
    assert alias_version("nothing", "champion") is None
    assert latest_version(NAME) == "3"


def test_a_model_without_versions_says_to_train_first(mlflow_store: Store) -> None:
    with pytest.raises(
        match=r"^model 'nothing' has no registered version; "
        r"run the train step first$"
    ):
        latest_version("nothing")


PACKAGING = metadata.version("packaging")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"packaging=={PACKAGING}", []),
        ("packaging>=1,<1000", []),
        ("packaging==0.1", [f"packaging==0.1 (installed: {PACKAGING})"]),
        ("Packaging==0.1  # a comment", [f"Packaging==0.1 (installed: {PACKAGING})"]),
        ("no-such-package==1.0", ["no-such-package==1.0 (installed: none)"]),
        ('packaging==0.1; sys_platform == "nowhere"', []),
        ("-r other-requirements.txt", []),
        ("# only a comment", []),
        ("", []),
    ],
)
def test_unmet_requirements_name_the_wanted_and_the_installed_version(
    line: str, expected: list[str]
) -> None:
    assert unmet_requirements([line]) == expected
