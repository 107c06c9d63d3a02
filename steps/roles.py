"""Roles: the tracking server's users and what each may do, set by its admin in one command.

    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... python -m steps.roles

Reads:  MLFLOW_TRACKING_URI (a tracking server run with `mlflow server --app-name basic-auth`),
        the admin's login (MLFLOW_TRACKING_USERNAME/PASSWORD), the four passwords
        MLFLOW_<ROLE>_PASSWORD, MLFLOW_EXPERIMENT_NAME, CANDIDATE_MODEL_NAME and MODEL_NAME.
Writes: on the server: the experiment and both registered models (when absent), the users of
        ROLES with those passwords, and exactly the permissions of ROLES on those three (any
        other grant of theirs on them is removed). Run twice, it leaves the same state.

Creating a version and moving an alias both need EDIT on a registered model, so the trainer
registers into CANDIDATE_MODEL_NAME and only the releaser may edit MODEL_NAME, the model served:
promote copies a candidate version into it (MlflowClient.copy_model_version) and moves
`champion` there.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from dataclasses import dataclass

import click
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from mlflow.server.auth.client import AuthServiceClient

from config.errors import UserError
from config.settings import Settings
from steps.tracking import cli_errors, configure, export_credentials

EXPERIMENT, CANDIDATES, SERVED = "experiment", "candidates", "served"
# user -> what it may do on the experiment, the candidate model and the served model
ROLES: dict[str, dict[str, str]] = {
    "trainer": {EXPERIMENT: "EDIT", CANDIDATES: "EDIT", SERVED: "READ"},
    "releaser": {EXPERIMENT: "EDIT", CANDIDATES: "READ", SERVED: "EDIT"},
    "controller": {EXPERIMENT: "READ", SERVED: "READ"},
    "viewer": {EXPERIMENT: "READ", CANDIDATES: "READ", SERVED: "READ"},
}


@dataclass(frozen=True)
class Resource:
    kind: str  # a key of ROLES' entries
    resource_type: str  # the auth app's
    resource_id: str


def check_settings(settings: Settings) -> None:
    """UserError unless the settings can give every role its own place."""
    if not settings.mlflow_tracking_uri.startswith(("http://", "https://")):
        raise UserError(
            "MLFLOW_TRACKING_URI must be the tracking server's http(s) URL, "
            f"got {settings.mlflow_tracking_uri!r}"
        )
    if settings.candidate_model_name == settings.model_name:
        raise UserError(
            f"CANDIDATE_MODEL_NAME must differ from MODEL_NAME ({settings.model_name!r}): "
            "otherwise the trainer could move the champion"
        )
    for user in ROLES:
        if not password(settings, user):
            raise UserError(f"MLFLOW_{user.upper()}_PASSWORD is empty: set user {user}'s password")


def password(settings: Settings, user: str) -> str:
    return str(getattr(settings, f"mlflow_{user}_password"))


def check_admin(uri: str, admin: AuthServiceClient, username: str) -> None:
    """UserError when the server cannot be reached or does not take `username` as an admin."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
            pass
    except (OSError, urllib.error.URLError) as error:
        raise UserError(f"cannot reach the tracking server at {uri}: {error}") from None
    if not username:
        raise UserError("MLFLOW_TRACKING_USERNAME is empty: give the admin's login")
    try:
        user = admin.get_user(username)
    except MlflowException:
        raise UserError(
            f"the tracking server at {uri} refused user {username!r}: is "
            "MLFLOW_TRACKING_PASSWORD the admin password, and does the server run with "
            "--app-name basic-auth?"
        ) from None
    if not user.is_admin:
        raise UserError(f"user {username!r} is not an admin of the tracking server at {uri}")


def resources(settings: Settings) -> list[Resource]:
    """The experiment and both registered models, created when absent (by the admin)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow_experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(settings.mlflow_experiment_name)
    )
    for name in (settings.candidate_model_name, settings.model_name):
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
    return [
        Resource(EXPERIMENT, "experiment", experiment_id),
        Resource(CANDIDATES, "registered_model", settings.candidate_model_name),
        Resource(SERVED, "registered_model", settings.model_name),
    ]


def ensure_user(admin: AuthServiceClient, user: str, secret: str) -> str:
    """Create `user`, or set its password; returns what was done."""
    try:
        admin.get_user(user)
    except RestException:
        admin.create_user(user, secret)
        return "created"
    admin.update_user_password(user, secret)
    return "password set"


def ensure_permission(
    admin: AuthServiceClient, user: str, resource: Resource, permission: str | None
) -> None:
    """`user` holds exactly `permission` on `resource` (no grant of its own when None)."""
    held = admin.get_user_permission(user, resource.resource_type, resource.resource_id)
    if permission is not None and held.permission == permission:
        return
    with contextlib.suppress(RestException):  # it held no grant of its own
        admin.revoke_user_permission(user, resource.resource_type, resource.resource_id)
    if permission is not None:
        admin.grant_user_permission(user, resource.resource_type, resource.resource_id, permission)


def apply_roles(settings: Settings, username: str) -> list[str]:
    """Users and permissions of ROLES on the server; one line per user saying what it got."""
    check_settings(settings)
    export_credentials(settings)
    admin = AuthServiceClient(settings.mlflow_tracking_uri)
    check_admin(settings.mlflow_tracking_uri, admin, username)
    configure(settings)
    found = resources(settings)
    lines = []
    for user, wanted in ROLES.items():
        done = ensure_user(admin, user, password(settings, user))
        for resource in found:
            ensure_permission(admin, user, resource, wanted.get(resource.kind))
        names = {
            EXPERIMENT: settings.mlflow_experiment_name,
            CANDIDATES: settings.candidate_model_name,
            SERVED: settings.model_name,
        }
        grants = ", ".join(f"{wanted[kind]} on {names[kind]}" for kind in names if kind in wanted)
        lines.append(f"{user}: {done}; {grants}")
    return lines


@click.command()
@cli_errors
def main() -> None:
    """Create or update the tracking server's users (trainer, releaser, controller, viewer)."""
    settings = Settings.from_env()
    for line in apply_roles(settings, settings.mlflow_tracking_username):
        click.echo(line)


if __name__ == "__main__":
    main()
