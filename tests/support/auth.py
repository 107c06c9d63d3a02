"""A real tracking server with MLflow's basic-auth app on 127.0.0.1, its users made by
`steps.roles`, and the environment each role's commands run with."""

from __future__ import annotations

import configparser
import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port, running

ROOT = Path(__file__).resolve().parents[2]
AUTH_INI = ROOT / "docker" / "mlflow" / "basic_auth.ini"
MODEL, CANDIDATES = "property-friends", "property-friends-candidates"
ROLES = ("trainer", "releaser", "controller", "viewer")


@dataclass(frozen=True)
class AuthServer:
    """Where the server listens and every password it knows (admin's and the roles')."""

    uri: str
    workdir: Path
    passwords: dict[str, str]
    process: subprocess.Popen

    def env(self, base: dict[str, str], user: str | None) -> dict[str, str]:
        """`base` pointed at this server, logged in as `user` (None: anonymous)."""
        env = {
            **base,
            "MLFLOW_TRACKING_URI": self.uri,
            "MODEL_NAME": MODEL,
            "CANDIDATE_MODEL_NAME": CANDIDATES,
            "PYTHONPATH": str(ROOT),  # this checkout's steps, wherever the command runs
        }
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(name, None)
        if user is not None:
            env["MLFLOW_TRACKING_USERNAME"] = user
            env["MLFLOW_TRACKING_PASSWORD"] = self.passwords[user]
        return env

    def roles_env(self, base: dict[str, str]) -> dict[str, str]:
        """The admin's environment for `python -m steps.roles`."""
        env = self.env(base, "admin")
        env.update({f"MLFLOW_{role.upper()}_PASSWORD": self.passwords[role] for role in ROLES})
        return env

    def log(self) -> str:
        return (self.workdir / "mlflow-server.log").read_text()[-4000:]


def auth_ini(workdir: Path) -> Path:
    """The compose ini with the user store in a sqlite file under `workdir`."""
    config = configparser.ConfigParser()
    config.read(AUTH_INI)
    config["mlflow"]["database_uri"] = f"sqlite:///{workdir / 'basic_auth.db'}"
    path = workdir / "basic_auth.ini"
    with path.open("w") as file:
        config.write(file)
    return path


@contextlib.contextmanager
def running_auth_server(workdir: Path, env: dict[str, str]) -> Iterator[AuthServer]:
    """`mlflow server --app-name basic-auth` on a free port (sqlite stores under `workdir`),
    stopped at the end; the admin password and the secret key come from its environment."""
    port = free_port()
    passwords = {user: secrets.token_hex(12) for user in ("admin", *ROLES)}
    server_env = {
        **env,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini(workdir)),
        "MLFLOW_AUTH_ADMIN_PASSWORD": passwords["admin"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{workdir / 'mlflow.db'}",
    }
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"),
        *("--artifacts-destination", str(workdir / "artifacts"), "--serve-artifacts"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    url, log = f"http://127.0.0.1:{port}", workdir / "mlflow-server.log"
    with running(command, f"{url}/health", log, server_env, timeout=90) as process:
        yield AuthServer(url, workdir, passwords, process)
