"""Runtime settings: every environment variable declared once, with type, default and help.

Field `gateway_port` is the variable GATEWAY_PORT; groups per service. Read from the environment,
then `./.env`; an empty value means the default. Model tunables live in `params.yaml`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.errors import UserError

PROJECT_DIR = Path(__file__).resolve().parents[1]
_GIVEN_VALUES_ONLY: ContextVar[bool] = ContextVar("given_values_only", default=False)
# How often a gateway worker looks at MODEL_INFO_PATH; the rollout controller waits longer than
# this before it stops the servers of a replaced pool.
MODEL_INFO_CHECK_SECONDS = 1.0
# How often a gateway worker looks at GATEWAY_API_KEYS_FILE (a stat, on the request path).
KEYS_CHECK_SECONDS = 1.0


class SettingsError(UserError):
    """An environment variable has a value that cannot be used."""


class PipelineSettings(BaseModel):
    """pipeline: the steps (steps/), with MLflow tracking and the model registry"""

    mlflow_tracking_uri: str = Field(
        default_factory=lambda: f"sqlite:///{PROJECT_DIR}/mlflow.db",
        description="tracking and registry store (default: mlflow.db in the project)",
    )
    mlflow_experiment_name: str = Field("property-friends", description="MLflow experiment")
    model_name: str = Field(
        "property-friends", description="registered model served: promote moves its alias"
    )
    candidate_model_name: str = Field(
        default_factory=lambda data: data["model_name"],
        description="registered model train registers into; promote copies a version into "
        "MODEL_NAME when they differ (default: MODEL_NAME; set it apart on a shared tracking "
        "server, see steps/roles.py)",
    )
    model_alias: str = Field("champion", description="alias that promote moves")
    state_dir: Path = Field(
        default_factory=lambda: PROJECT_DIR / ".run",
        description="pid files, logs, served-model.json (default: .run in the project)",
    )
    mlflow_tracking_username: str = Field(
        "", description="user on a tracking server with login (read by MLflow's client)"
    )
    mlflow_tracking_password: str = Field(
        "", repr=False, description="that user's password (read by MLflow's client)"
    )

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _no_credentials_in_uri(cls, uri: str) -> str:
        if urlsplit(uri).password is not None or "@" in urlsplit(uri).netloc:
            raise ValueError(
                "a URI without credentials (set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD instead)"
            )
        return uri


class RolesSettings(BaseModel):
    """roles: python -m steps.roles (the tracking server's users, created by its admin)"""

    mlflow_trainer_password: str = Field("", repr=False, description="password of user trainer")
    mlflow_releaser_password: str = Field("", repr=False, description="password of user releaser")
    mlflow_controller_password: str = Field(
        "", repr=False, description="password of user controller"
    )
    mlflow_viewer_password: str = Field("", repr=False, description="password of user viewer")


class ModelServerSettings(BaseModel):
    """model server: python -m serving.serve"""

    model_uri: str = Field(
        default_factory=lambda data: f"models:/{data['model_name']}@{data['model_alias']}",
        description="what is served: an alias, a stage or a version, e.g. "
        "models:/property-friends/3 (default: models:/MODEL_NAME@MODEL_ALIAS)",
    )
    model_port: int = Field(5001, gt=0, lt=65536, description="port of the model server")
    model_workers: int = Field(1, gt=0, description="uvicorn workers of the model server")
    model_timeout_seconds: int = Field(30, gt=0, description="answer timeout (504)")
    model_info_path: Path = Field(
        default_factory=lambda data: data["state_dir"] / "served-model.json",
        description="what is served, for the gateway (default: STATE_DIR/served-model.json)",
    )
    model_servers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        gt=0,
        description="single-worker model servers in the pool (default: one per core)",
    )


class ControllerSettings(BaseModel):
    """rollout controller: python -m serving.controller"""

    model_start_timeout_seconds: float = Field(
        180.0,
        gt=0,
        description="how long a new model server may take to answer /ping and price its canary",
    )
    rollout_poll_seconds: float = Field(
        5.0, gt=0, description="how often the controller resolves MODEL_URI in the registry"
    )
    controller_metrics_port: int = Field(
        9101,
        gt=0,
        lt=65536,
        description="the controller's Prometheus /metrics (model_rollouts_total{result})",
    )
    rollout_executor: Literal["process", "kubernetes"] = Field(
        "process",
        description="process: the pool is model server processes the controller starts; "
        "kubernetes: it rolls the model server Deployment through the Kubernetes API",
    )
    kubernetes_namespace: str = Field("default", description="namespace of the Deployment")
    model_server_deployment: str = Field(
        "model-server", description="the model server Deployment (kubernetes executor)"
    )
    served_model_configmap: str = Field(
        "served-model",
        description="ConfigMap the controller writes the served-model file into, for the "
        "gateway to mount (kubernetes executor)",
    )


class GatewaySettings(BaseModel):
    """gateway: gunicorn -c gateway/gunicorn.conf.py"""

    gateway_host: str = Field("127.0.0.1", description="listen address (0.0.0.0 in a container)")
    gateway_port: int = Field(8000, gt=0, lt=65536, description="listen port")
    gateway_workers: int = Field(2, gt=0, description="gunicorn processes")
    gateway_connections: int = Field(
        100, gt=0, description="client connections one gunicorn process serves at once"
    )
    gateway_upstream_url: str = Field(
        default_factory=lambda data: f"http://127.0.0.1:{data['model_port']}",
        description="the model server when the served-model file lists no pool (default: "
        "http://127.0.0.1:MODEL_PORT)",
    )
    gateway_out_of_rotation_seconds: float = Field(
        5.0,
        gt=0,
        description="how long a pool server that refused a connection or answered 5xx gets "
        "no requests",
    )
    gateway_api_keys: str = Field(
        "",
        repr=False,
        description="comma-separated id:key or id:sha256:<hex sha256 of the key>; prefer hashes",
    )
    gateway_api_keys_file: str = Field(
        "",
        description="JSON-lines file of more keys (id, sha256 or key, scopes, expires, rate, "
        "burst), e.g. a mounted secret; each worker takes a change within "
        f"{KEYS_CHECK_SECONDS:g} s (README, The API)",
    )
    gateway_allow_no_auth: bool = Field(
        False, description="only for local experiments: no API key, every request is accepted"
    )
    gateway_rate_limit: float = Field(
        0.0,
        ge=0,
        description="requests per second per key id, for keys without a rate of their own in "
        "GATEWAY_API_KEYS_FILE, shared by this gateway's workers; 0: no limit",
    )
    gateway_metrics_key_ids: int = Field(
        20,
        ge=0,
        description="key ids that get a label of their own in the per-client metrics, in the "
        "order the keys are listed; the others are counted as other",
    )
    gateway_request_log: Path = Field(
        default_factory=lambda data: data["state_dir"] / "logs" / "requests.jsonl",
        description="JSON-lines request log: a file (rotate it by renaming) or - for stdout "
        "(default: STATE_DIR/logs/requests.jsonl; the image's: -)",
    )
    gateway_log_payloads: bool = Field(True, description="log features and predictions")
    gateway_max_body_bytes: int = Field(8 << 20, gt=0, description="largest request body (413)")
    gateway_connect_timeout_seconds: float = Field(1.0, gt=0, description="connect timeout")
    gateway_read_timeout_seconds: float = Field(10.0, gt=0, description="answer timeout (504)")
    gateway_metrics_public: bool = Field(True, description="false: /metrics needs an API key too")


class OutcomesSettings(BaseModel):
    """outcomes: the prediction store (gateway) and live accuracy (python -m steps.monitor)"""

    prediction_store_url: str = Field(
        default_factory=lambda data: f"sqlite:///{data['state_dir']}/predictions.db",
        repr=False,
        description="where the gateway keeps every priced row and every realized price, for "
        "the monitor: sqlite:///<file> (one machine) or postgresql://user:password@host/db "
        "(default: sqlite:///STATE_DIR/predictions.db)",
    )

    @field_validator("prediction_store_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if not url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("sqlite:///<file> or postgresql://user:password@host/database")
        return url

    monitor_window_days: float = Field(
        30.0, gt=0, description="live accuracy: valuations of the last this many days"
    )
    monitor_mae_factor: float = Field(
        1.5,
        gt=0,
        description="alert LiveMaeAboveTest when live MAE exceeds the version's test MAE this "
        "many times",
    )
    monitor_min_outcomes: int = Field(
        30, gt=0, description="realized prices a version needs before its live accuracy alerts"
    )
    monitor_coverage_band: float = Field(
        0.1,
        gt=0,
        lt=0.8,
        description="alert LiveCoverageOffTarget when the 80% range's live coverage is further "
        "than this from 0.8",
    )


# A new service (e.g. the rollout controller) declares its group like the ones above and adds
# it to the bases of Settings, left of the groups its derived defaults read.
class Settings(
    OutcomesSettings,
    GatewaySettings,
    ControllerSettings,
    ModelServerSettings,
    RolesSettings,
    PipelineSettings,
    BaseSettings,
):
    """Every setting of every service; `Settings.from_env()` reads them."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if _GIVEN_VALUES_ONLY.get():
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The environment, then ./.env (the environment wins); or `environ` alone if given."""
        token = _GIVEN_VALUES_ONLY.set(environ is not None)
        try:
            values = {k.lower(): v for k, v in (environ or {}).items() if v.strip()}
            return cls(**values)  # type: ignore[arg-type]  # pydantic parses the strings
        except ValidationError as error:
            raise SettingsError(_describe(error)) from None
        finally:
            _GIVEN_VALUES_ONLY.reset(token)

    def redacted(self) -> dict[str, object]:
        """The settings as a dict safe to log: API keys are never shown."""
        secret = {name for name, field in type(self).model_fields.items() if not field.repr}
        return {
            name: ("<set>" if value else "<unset>") if name in secret else value
            for name, value in self.model_dump().items()
        }


_TYPES = {"int_parsing": "an integer", "float_parsing": "a number", "bool_parsing": "true or false"}


def _describe(error: ValidationError) -> str:
    """One line naming each bad variable, what it allows and what it got (not when a check of
    ours refused it: the value may hold a password)."""
    return "; ".join(
        f"{str(item['loc'][0]).upper()} must be {_allowed(item)}"
        + ("" if item["type"] == "value_error" else f", got {item['input']!r}")
        for item in error.errors()
        if item["type"] != "default_factory_not_called"
    )  # derived from a value reported


def _allowed(item: Mapping) -> str:
    message = item["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    return _TYPES.get(item["type"]) or message


def env_example() -> str:
    """The text of `.env.example`: every variable with its help and default."""
    lines = [
        "# Every setting and its default (empty: computed). Copy to .env (never committed);",
        "# the environment wins over it. Written by: python -m config.settings > .env.example",
    ]
    for group in reversed(Settings.__bases__[:-1]):  # the groups, BaseSettings left out
        lines += ["", f"# --- {group.__doc__} ---"]
        for name, field in cast(type[BaseModel], group).model_fields.items():
            default = "" if field.default_factory else field.default
            value = str(default).lower() if isinstance(default, bool) else str(default)
            lines += [f"# {field.description}", f"{name.upper()}={value}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(env_example(), end="")
