"""What the rollout controller runs in processes of its own: the download of a version, the
checks of promote on it, an evaluation. MLflow, pandas and the model they load (and the data an
evaluation reads) are given back to the system when the process ends, so the controller holds
neither between rollouts: they are imported inside the functions, and what crosses back is
plain data (a `Checked`, a UserError)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from config.errors import UserError
from config.settings import Settings
from serving.files import copy_path, has_copy
from serving.servers import Canary, ServerError
from steps.params import Params

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel

T = TypeVar("T")
logger = logging.getLogger(__name__)


def in_child(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in a new Python process (spawned: nothing of this one is copied);
    what it raises is raised here."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


@dataclass(frozen=True)
class Checked:
    """A version that passed the checks of promote: its canary and training reference."""

    canary: Canary
    reference: dict[str, Any] | None


def check_version(info: dict, settings: Settings) -> Checked:
    """Download the version `info` names (once), run the checks of promote on the local copy
    (package versions, load, its input example priced); its canary and training reference."""
    from steps.promote import check_loadable

    with plain_errors():
        path = local_copy(info, settings)
        checked = canary(check_loadable(info["uri"], str(path)))
        return Checked(checked, training_reference(info["uri"]))


def ensure_copy(info: dict, settings: Settings) -> None:
    """The version's local copy, downloaded again if it went."""
    with plain_errors():
        local_copy(info, settings)


def evaluate_against(version: str, against: str, params: Params, settings: Settings) -> None:
    """Evaluate `version` of MODEL_NAME against the served version `against`: tags its verdict
    (this writes a run and tags: with read-only credentials it fails, and the version is
    refused)."""
    from steps.evaluate import run_evaluate
    from steps.tracking import configure

    served = settings.model_copy(update={"candidate_model_name": settings.model_name})
    with plain_errors():
        configure(served)
        run_evaluate(version, "", params, served, against=against)


@contextlib.contextmanager
def plain_errors() -> Iterator[None]:
    """MLflow's and the steps' errors leave as a UserError: unpickling theirs would import
    MLflow in the controller."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (UserError, MlflowException) as error:
        if type(error) is UserError:
            raise
        raise UserError(" ".join(str(error).split())) from None


def local_copy(info: dict, settings: Settings) -> Path:
    """The version's files under STATE_DIR/models/<name>-<version>, downloaded once: every
    server of the version loads them from there (`mlflow models serve`'s launcher downloads a
    copy of its own for each server)."""
    from mlflow.artifacts import download_artifacts

    target = copy_path(info, settings)
    if not has_copy(info, settings):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        download_artifacts(artifact_uri=info["uri"], dst_path=str(partial))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def canary(model: PyFuncModel) -> Canary:
    """The canary of a loaded model: its input example, priced here."""
    from mlflow.models import convert_input_example_to_serving_input

    example = model.input_example
    body = convert_input_example_to_serving_input(example)
    if body is None:
        raise ServerError("the model has no input example to price as the canary")
    prices = model.predict(example)  # a DataFrame: the contract of pyfunc.model
    return Canary(body.encode(), prices.to_dict(orient="records"))  # type: ignore[attr-defined]


def training_reference(model_uri: str) -> dict | None:
    """The binned training distribution of each feature (for drift), if the model has one."""
    from steps.registry import load_reference

    try:
        return load_reference(model_uri)
    except UserError as error:
        logger.warning("%s: drift will not be measured", error)
        return None
