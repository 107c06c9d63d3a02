"""The registry read without MLflow's client, for processes that run for weeks and must stay
small (the rollout controller: MLflow's client alone holds 170 MB, pandas and pyarrow with it).

Two readers of what a `models:/` URI names now and of a version's tags:
- `RestRegistry`, a tracking server (MLFLOW_TRACKING_URI http(s)://...): MLflow's REST API,
  with MLflow's own credentials (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or
  MLFLOW_TRACKING_TOKEN) and TLS settings (MLFLOW_TRACKING_INSECURE_TLS,
  MLFLOW_TRACKING_SERVER_CERT_PATH), read as MLflow reads them;
- `SqlRegistry`, a database store (sqlite:///..., postgresql://...): the registry's tables as
  MLflow 3.17's SqlAlchemyStore writes them, single-tenant (workspace `default`); MLflow is
  pinned, and tests/unit/test_registry_reader.py compares both readers with MLflow's client.
Every failure is a UserError saying what to check; the URI grammar and the fields a resolved
version has are defined here, once, for `steps.registry` too.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson
import sqlalchemy
import urllib3

from config.errors import UserError

METRIC_TAGS = ("test_mae", "test_rmse", "test_mape", "test_r2")
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))$")
_STAGES = {stage.lower(): stage for stage in ("None", "Staging", "Production", "Archived")}
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
_TIMEOUT = urllib3.Timeout(connect=5.0, read=30.0)


class NotFound(UserError):
    """The registry was read: it has no such model, version, alias or stage."""


@dataclass(frozen=True)
class Reference:
    """A `models:/` URI taken apart: a name and one of alias, version number or stage."""

    name: str
    alias: str | None
    ref: str | None

    @classmethod
    def parse(cls, uri: str) -> Reference | None:
        """None for a URI outside the registry (runs:/, a path)."""
        match = _URI.match(uri)
        return cls(*match.group("name", "alias", "ref")) if match else None

    @property
    def what(self) -> str:
        if self.alias:
            return f"alias {self.alias!r}"
        return f"version {self.ref!r}" if self.is_version else f"version in stage {self.ref!r}"

    @property
    def is_version(self) -> bool:
        return bool(self.ref and self.ref.isdigit())

    def not_found(self, uri: str) -> NotFound:
        return NotFound(f"cannot resolve {uri}: model {self.name!r} has no {self.what}")


def model_uri(name: str, version: str | int | None = None, alias: str | None = None) -> str:
    """`models:/<name>/<version>`, or `models:/<name>@<alias>` when an alias is given."""
    return f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"


def described(reference: Reference, version: str, run_id: str | None, tags: dict) -> dict:
    """What a resolved URI points at: name, version, alias or stage, the URI pinned to that
    version, run and test metrics (as `steps.registry.resolve` and the readers give it)."""
    return {
        "name": reference.name,
        "version": str(version),
        "alias": reference.alias or reference.ref,
        "uri": model_uri(reference.name, version),
        "run_id": run_id,
        "metrics": {key: float(tags[key]) for key in METRIC_TAGS if key in tags},
    }


def unregistered(uri: str) -> dict:
    """A URI outside the registry, served as it is."""
    return dict(name=None, version="unregistered", alias=None, uri=uri, run_id=None, metrics={})


class RegistryReader(Protocol):
    def resolve(self, uri: str) -> dict:
        """What `uri` names now (`described`), or UserError."""

    def tags(self, name: str, version: str) -> dict[str, str]:
        """The version's tags, or UserError."""


def registry_reader(tracking_uri: str) -> RegistryReader:
    """The reader for MLFLOW_TRACKING_URI: a server's REST API or a database's tables."""
    if tracking_uri.startswith(("http://", "https://")):
        return RestRegistry(tracking_uri)
    if "://" in tracking_uri and not tracking_uri.startswith("file:"):
        return SqlRegistry(tracking_uri)
    raise UserError(
        f"MLFLOW_TRACKING_URI={tracking_uri!r}: the rollout controller reads the registry of a "
        "tracking server (http[s]://) or of a database (sqlite:///, postgresql://)"
    )


class RestRegistry:
    """A tracking server's registry through MLflow's REST API."""

    def __init__(self, tracking_uri: str):
        self.base = tracking_uri.rstrip("/") + "/api/2.0/mlflow"
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        self.http = urllib3.PoolManager(
            retries=urllib3.Retry(total=2, backoff_factor=0.5, allowed_methods=None),
            timeout=_TIMEOUT,
            cert_reqs="CERT_NONE" if insecure else "CERT_REQUIRED",
            ca_certs=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None,
        )

    def resolve(self, uri: str) -> dict:
        reference = Reference.parse(uri)
        if reference is None:
            return unregistered(uri)
        found = self._version_of(reference, uri)
        return described(reference, found["version"], found.get("run_id"), _tags(found))

    def tags(self, name: str, version: str) -> dict[str, str]:
        reference = Reference(name, None, str(version))
        found = self._version_of(reference, model_uri(name, version))
        return _tags(found)

    def _version_of(self, reference: Reference, uri: str) -> dict:
        name = reference.name
        if reference.alias:
            answer = self._call(
                uri, "GET", "registered-models/alias", name=name, alias=reference.alias
            )
        elif reference.is_version:
            answer = self._call(uri, "GET", "model-versions/get", name=name, version=reference.ref)
        else:
            stage = _STAGES.get((reference.ref or "").lower(), reference.ref)
            body = {"name": name, "stages": [stage]}
            answer = self._call(uri, "POST", "registered-models/get-latest-versions", body=body)
            versions = answer.get("model_versions") or [{}]
            answer = {"model_version": versions[0]}
        found = answer.get("model_version") or {}
        if "version" not in found:
            raise reference.not_found(uri)
        return found

    def _call(self, uri: str, method: str, path: str, body: Any = None, **query: Any) -> dict:
        """The answer's JSON; {} when the model or version does not exist."""
        url = f"{self.base}/{path}" + (f"?{urlencode(query)}" if query else "")
        try:
            response = self.http.request(
                method,
                url,
                body=orjson.dumps(body) if body is not None else None,
                headers={"Content-Type": "application/json", **credentials()},
            )
        except urllib3.exceptions.HTTPError as error:
            raise UserError(
                f"the tracking server at {self.base} cannot be reached: {error}"
            ) from None
        try:
            answer = orjson.loads(response.data) if response.data else {}
        except orjson.JSONDecodeError:
            answer = {"message": response.data[:200].decode(errors="replace")}
        if response.status == 200:
            return answer
        if answer.get("error_code") in _NOT_FOUND:
            return {}
        raise UserError(
            f"the tracking server refused to resolve {uri} (HTTP {response.status}: "
            f"{answer.get('message', '').strip() or 'no message'}); "
            + _HINTS.get(response.status, "check MLFLOW_TRACKING_URI")
        )


_HINTS = {
    401: "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)",
    403: "the user needs READ on the registered model",
}


def credentials() -> dict[str, str]:
    """The Authorization header MLflow's client would send, from MLflow's own variables."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{key}") for key in ("USERNAME", "PASSWORD"))
    if user and password:
        pair = base64.standard_b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def _tags(found: dict) -> dict[str, str]:
    return {tag["key"]: tag.get("value", "") for tag in found.get("tags") or ()}


_SQL_VERSION = (
    "SELECT version, run_id FROM model_versions WHERE workspace = 'default' "
    "AND name = :name AND current_stage != 'Deleted_Internal'"
)
_SQL_QUERIES = {
    "alias": "SELECT v.version, v.run_id FROM registered_model_aliases a "
    "JOIN model_versions v ON v.workspace = a.workspace AND v.name = a.name "
    "AND v.version = a.version WHERE a.workspace = 'default' AND a.name = :name "
    "AND a.alias = :alias",
    "version": _SQL_VERSION + " AND version = :version",
    "stage": _SQL_VERSION + " AND current_stage = :stage ORDER BY version DESC LIMIT 1",
}
_SQL_TAGS = (
    "SELECT key, value FROM model_version_tags WHERE workspace = 'default' "
    "AND name = :name AND version = :version"
)


class SqlRegistry:
    """A database store's registry, read from its tables."""

    def __init__(self, tracking_uri: str):
        self.engine = sqlalchemy.create_engine(tracking_uri, pool_pre_ping=True)

    def resolve(self, uri: str) -> dict:
        reference = Reference.parse(uri)
        if reference is None:
            return unregistered(uri)
        values: dict[str, Any]
        if reference.alias:
            query, values = "alias", {"alias": reference.alias}
        elif reference.is_version:
            query, values = "version", {"version": int(reference.ref or 0)}
        else:
            query, values = "stage", {"stage": _STAGES.get((reference.ref or "").lower())}
        rows = self._rows(_SQL_QUERIES[query], name=reference.name, **values)
        if not rows:
            raise reference.not_found(uri)
        version, run_id = rows[0]
        return described(reference, version, run_id, self.tags(reference.name, version))

    def tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self._rows(_SQL_TAGS, name=name, version=int(version)))

    def _rows(self, query: str, **values: Any) -> list:
        try:
            with self.engine.connect() as connection:
                return [tuple(row) for row in connection.execute(sqlalchemy.text(query), values)]
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise UserError(
                f"cannot read the model registry: {error.__class__.__name__}: {error}"
            ) from None
