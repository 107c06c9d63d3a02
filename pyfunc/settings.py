"""Runtime settings: every endpoint, name and secret, read once from the environment.

Tunables of the model (hyperparameters, split, promotion gate) live in `params.yaml`;
what differs between deployments lives here. `.env.example` lists every variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
# How often a gateway worker looks at MODEL_INFO_PATH; the rollout controller waits longer than
# this before it stops the servers of a replaced pool.
MODEL_INFO_CHECK_SECONDS = 1.0


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used."""


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _str(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(name, "").strip() or default


@dataclass(frozen=True)
class Settings:
    tracking_uri: str
    experiment_name: str
    model_name: str
    model_alias: str
    model_uri: str
    model_port: int
    model_workers: int
    model_timeout_seconds: int
    model_info_path: Path
    state_dir: Path
    gateway_port: int
    gateway_workers: int
    gateway_upstream_url: str
    gateway_api_keys: str
    gateway_request_log: Path
    gateway_log_payloads: bool
    gateway_max_body_bytes: int
    gateway_connect_timeout_seconds: float
    gateway_read_timeout_seconds: float
    gateway_metrics_public: bool
    gateway_host: str
    gateway_threads: int
    gateway_allow_no_auth: bool
    gateway_out_of_rotation_seconds: float
    model_servers: int
    model_start_timeout_seconds: float
    rollout_poll_seconds: float
    controller_metrics_port: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        state_dir = Path(_str(env, "STATE_DIR", str(PROJECT_DIR / ".run")))
        model_name = _str(env, "MODEL_NAME", "property-friends")
        model_alias = _str(env, "MODEL_ALIAS", "champion")
        model_port = _int(env, "MODEL_PORT", 5001)
        return cls(
            tracking_uri=_str(env, "MLFLOW_TRACKING_URI", f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"),
            experiment_name=_str(env, "MLFLOW_EXPERIMENT_NAME", "property-friends"),
            model_name=model_name,
            model_alias=model_alias,
            model_uri=_str(env, "MODEL_URI", f"models:/{model_name}@{model_alias}"),
            model_port=model_port,
            model_workers=_int(env, "MODEL_WORKERS", 1),
            model_timeout_seconds=_int(env, "MODEL_TIMEOUT_SECONDS", 30),
            model_info_path=Path(
                _str(env, "MODEL_INFO_PATH", str(state_dir / "served-model.json"))
            ),
            state_dir=state_dir,
            gateway_port=_int(env, "GATEWAY_PORT", 8000),
            gateway_workers=_int(env, "GATEWAY_WORKERS", 2),
            gateway_upstream_url=_str(env, "GATEWAY_UPSTREAM_URL", f"http://127.0.0.1:{model_port}"),
            gateway_api_keys=env.get("GATEWAY_API_KEYS", "").strip(),
            gateway_request_log=Path(
                _str(env, "GATEWAY_REQUEST_LOG", str(state_dir / "logs" / "requests.jsonl"))
            ),
            gateway_log_payloads=_bool(env, "GATEWAY_LOG_PAYLOADS", True),
            gateway_max_body_bytes=_int(env, "GATEWAY_MAX_BODY_BYTES", 8 * 1024 * 1024),
            gateway_connect_timeout_seconds=_float(env, "GATEWAY_CONNECT_TIMEOUT_SECONDS", 1.0),
            gateway_read_timeout_seconds=_float(env, "GATEWAY_READ_TIMEOUT_SECONDS", 10.0),
            gateway_metrics_public=_bool(env, "GATEWAY_METRICS_PUBLIC", True),
            gateway_host=_str(env, "GATEWAY_HOST", "127.0.0.1"),
            gateway_threads=_int(env, "GATEWAY_THREADS", 8),
            gateway_allow_no_auth=_bool(env, "GATEWAY_ALLOW_NO_AUTH", False),
            gateway_out_of_rotation_seconds=_float(env, "GATEWAY_OUT_OF_ROTATION_SECONDS", 5.0),
            model_servers=_int(env, "MODEL_SERVERS", os.cpu_count() or 1),
            model_start_timeout_seconds=_float(env, "MODEL_START_TIMEOUT_SECONDS", 180.0),
            rollout_poll_seconds=_float(env, "ROLLOUT_POLL_SECONDS", 5.0),
            controller_metrics_port=_int(env, "CONTROLLER_METRICS_PORT", 9101),
        )

    def redacted(self) -> dict[str, object]:
        """The settings as a dict safe to log: API keys are never shown."""
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["gateway_api_keys"] = "<set>" if self.gateway_api_keys else "<unset>"
        return shown
