"""The model registry in one place: `models:/` URIs, versions, aliases, stages and version tags;
for the steps and the serving processes, never the gateway (it reads what `serving.serve`
writes); also what a registered version stores beside the model (requirements, profile)."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from packaging.requirements import Requirement

from config.errors import UserError
from pyfunc.profile import PROFILE_PATH
from steps.registry_reader import Reference, described, model_uri, unregistered

PREVIOUS_ALIAS = "previous-champion"
REQUIREMENTS_FILE = "requirements.txt"  # pip's, as MLflow logs it beside MLmodel
PRODUCTION_STAGE = "Production"
ARCHIVED_STAGE = "Archived"
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _in_stage(client: MlflowClient, name: str, stage: str) -> ModelVersion | None:
    with warnings.catch_warnings(action="ignore", category=FutureWarning):  # stages: deprecated
        return next(iter(client.get_latest_versions(name, stages=[stage])), None)


def lookup(uri: str) -> ModelVersion:
    """The version a `models:/` URI names now (by number, alias or stage), or UserError."""
    reference = Reference.parse(uri)
    if reference is None:
        raise UserError(f"{uri} is not a registry URI (models:/NAME/VERSION, @ALIAS or /STAGE)")
    name, alias, ref = reference.name, reference.alias, reference.ref or ""
    client = MlflowClient()
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, ref)
            if reference.is_version
            else _in_stage(client, name, ref)
        )
    except MlflowException as error:
        if error.error_code not in _NOT_FOUND:
            raise
        found = None
    if found is None:
        raise reference.not_found(uri)
    return found


def alias_version(name: str, alias: str) -> str | None:
    """The version `alias` points at, or None when the alias (or the model) does not exist."""
    try:
        return str(lookup(model_uri(name, alias=alias)).version)
    except UserError:
        return None


def latest_version(name: str) -> str:
    """The newest version of `name`; UserError when it has none."""
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    if not versions:
        raise UserError(f"model {name!r} has no registered version; run the train step first")
    return str(max(int(v.version) for v in versions))


def resolve(uri: str) -> dict:
    """What `uri` points at now (`steps.registry_reader.described`). A URI outside the
    registry (runs:/, a path) is served as it is."""
    reference = Reference.parse(uri)
    if reference is None:
        return unregistered(uri)
    found = lookup(uri)
    return described(reference, found.version, found.run_id, found.tags)


def unmet_requirements(lines: list[str]) -> list[str]:
    """Each pip requirement of `lines` this environment does not satisfy, with what it has."""
    unmet = []
    for line in (line.partition("#")[0].strip() for line in lines):
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            installed = "none"
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{requirement} (installed: {installed})")
    return unmet


def check_requirements(uri: str, local_copy: str | None = None) -> None:
    """UserError unless this environment has the package versions the model at `uri` (read
    from `local_copy` of it, if given) was logged with (its requirements.txt): a model
    unpickled by other versions may fail or err."""
    with tempfile.TemporaryDirectory() as tmp:
        if local_copy:
            requirements = Path(local_copy) / REQUIREMENTS_FILE
        else:
            requirements = Path(download_artifacts(f"{uri}/{REQUIREMENTS_FILE}", dst_path=tmp))
        unmet = unmet_requirements(requirements.read_text().splitlines())
    if unmet:
        raise UserError(
            f"{uri} was logged with {'; '.join(unmet)}: serve it from an image built from the "
            "lock file it was trained with, or train it again here"
        )


def set_alias(name: str, alias: str, version: str | None) -> None:
    """`alias` of model `name` -> `version`; None: the alias goes."""
    if version is None:
        MlflowClient().delete_registered_model_alias(name, alias)
    else:
        MlflowClient().set_registered_model_alias(name, alias, version)


def set_tags(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def move_champion(name: str, alias: str, version: str) -> str | None:
    """`alias` -> version, `previous-champion` -> the version it left, stage Production mirrored
    (for teams that promote by stage), tag `promoted_at`; returns the version it left, if any."""
    client, previous = MlflowClient(), alias_version(name, alias)
    if previous and previous != version:
        client.set_registered_model_alias(name, PREVIOUS_ALIAS, previous)
    client.set_registered_model_alias(name, alias, version)
    with warnings.catch_warnings(action="ignore", category=FutureWarning):  # stages: deprecated
        client.transition_model_version_stage(name, version, PRODUCTION_STAGE)
        # archived one by one: MLflow's archive_existing_versions compares the integer version
        # column with a string, which PostgreSQL refuses
        for other in client.search_model_versions(f"name = '{name}'"):
            if other.current_stage == PRODUCTION_STAGE and str(other.version) != str(version):
                client.transition_model_version_stage(name, other.version, ARCHIVED_STAGE)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    set_tags(name, version, {"promoted_at": now})
    return previous if previous != version else None


def release(candidate: str, version: str, name: str) -> str:
    """The version of `name` that is `version` of model `candidate`: copied now (with its tags,
    run and files) unless an earlier release copied it; `version` itself when both are one."""
    if candidate == name:
        return version
    source, client = model_uri(candidate, version), MlflowClient()
    for existing in client.search_model_versions(f"name = '{name}'"):
        if existing.source == source:
            return str(existing.version)
    try:
        return str(client.copy_model_version(source, name).version)
    except MlflowException as error:  # MLflow wraps the server's answer in a message of its own
        cause = error.__cause__ if isinstance(error.__cause__, MlflowException) else error
        raise UserError(
            f"cannot copy {source} into model {name!r}: {' '.join(cause.message.split())}; "
            "the champion is unchanged"
        ) from None


def load_reference(model_uri: str) -> dict:
    """The binned training distribution stored with the model at `model_uri`, or UserError."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = download_artifacts(f"{model_uri}/{PROFILE_PATH}", dst_path=tmp)
            return json.loads(Path(path).read_text())["reference"]
    except (MlflowException, OSError, KeyError, ValueError) as error:
        raise UserError(f"cannot read the training profile of {model_uri}: {error}") from None
