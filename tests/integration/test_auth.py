"""A real `mlflow server --app-name basic-auth` with the users `steps.roles` makes: nobody gets
in without a login, the trainer registers candidates but cannot touch what serves, the releaser
copies a candidate into the served model and moves `champion`, the controller and the viewer
only read; and no credential ends up in a URL, a logged parameter or a command line."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.support.auth import CANDIDATES, MODEL, AuthServer, running_auth_server
from tests.support.stack import SMALL_SOURCE, run_step, store_env

# slow: the tracking server with its users takes about 40 s to set up on 2 busy cores
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """The server with the roles applied, and a candidate version the trainer registered."""
    workdir = tmp_path_factory.mktemp("auth")
    with running_auth_server(workdir, store_env(workdir)) as running:
        first = run_step("steps.roles", env=running.roles_env(store_env(workdir)), cwd=workdir)
        (workdir / "roles-first.txt").write_text(first.stdout)
        yield running


def as_user(server: AuthServer, user: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    for name, value in server.env({}, user).items():
        monkeypatch.setenv(name, value)
    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def status_of(action) -> int:
    with pytest.raises(MlflowException) as refused:
        action()
    return refused.value.get_http_status_code()


def roles(server: AuthServer, **overrides: str) -> subprocess.CompletedProcess:
    env = {**server.roles_env(store_env(server.workdir)), **overrides}
    return run_step("steps.roles", env=env, cwd=server.workdir, check=False)


def candidate(server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new version of the candidates, registered by the trainer from a run of its own."""
    client = as_user(server, "trainer", monkeypatch)
    experiment = client.get_experiment_by_name("tests").experiment_id
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "a model", "model/MLmodel")
    source = f"runs:/{run.info.run_id}/model"
    return client.create_model_version(CANDIDATES, source, run.info.run_id).version


def test_an_anonymous_request_is_refused(server):
    url = f"{server.uri}/api/2.0/mlflow/registered-models/get?name={MODEL}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401


def test_roles_twice_give_the_same_users_and_permissions(server):
    second = roles(server)
    assert second.returncode == 0, second.stderr[-2000:]
    first = (server.workdir / "roles-first.txt").read_text().splitlines()
    assert [line.replace("created", "password set") for line in first] == second.stdout.splitlines()
    expected = [
        "trainer: password set; EDIT on tests, EDIT on property-friends-candidates, "
        "READ on property-friends",
        "releaser: password set; EDIT on tests, READ on property-friends-candidates, "
        "EDIT on property-friends",
        "controller: password set; READ on tests, READ on property-friends",
        "viewer: password set; READ on tests, READ on property-friends-candidates, "
        "READ on property-friends",
    ]
    assert second.stdout.splitlines() == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param(
            {"MLFLOW_TRACKING_PASSWORD": "wrong"},
            "refused user 'admin': is MLFLOW_TRACKING_PASS",
        ),
        pytest.param(
            {"MLFLOW_TRACKING_USERNAME": "viewer"},
            "user 'viewer' is not an admin",
        ),
        pytest.param(
            {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
            "cannot reach the tracking server",
        ),
        pytest.param(
            {"CANDIDATE_MODEL_NAME": MODEL},
            "CANDIDATE_MODEL_NAME must differ from MODEL_NAME",
        ),
        pytest.param(
            {"MLFLOW_VIEWER_PASSWORD": ""},
            "MLFLOW_VIEWER_PASSWORD is empty",
        ),
    ],
)
def test_roles_fail_in_one_line_naming_the_problem(server, overrides, message):
    if overrides.get("MLFLOW_TRACKING_USERNAME") == "viewer":
        overrides["MLFLOW_TRACKING_PASSWORD"] = server.passwords["viewer"]
    result = roles(server, **overrides)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_the_trainer_registers_candidates_but_cannot_change_what_serves(server, monkeypatch):
    version = candidate(server, monkeypatch)
    trainer = as_user(server, "trainer", monkeypatch)
    assert trainer.get_model_version(CANDIDATES, version).version == version
    source = f"models:/{CANDIDATES}/{version}"
    served = trainer.search_model_versions(f"name = '{MODEL}'")  # it may read what serves
    assert status_of(lambda: trainer.set_registered_model_alias(MODEL, "champion", "1")) == 403
    assert status_of(lambda: trainer.create_model_version(MODEL, source)) == 403
    assert trainer.search_model_versions(f"name = '{MODEL}'") == served


def test_the_releaser_copies_a_candidate_and_moves_champion(server, monkeypatch):
    version = candidate(server, monkeypatch)
    releaser = as_user(server, "releaser", monkeypatch)
    copy = releaser.copy_model_version(f"models:/{CANDIDATES}/{version}", MODEL)
    releaser.set_registered_model_alias(MODEL, "champion", copy.version)
    champion = releaser.get_model_version_by_alias(MODEL, "champion")
    assert champion.source == f"models:/{CANDIDATES}/{version}"
    assert champion.run_id == releaser.get_model_version(CANDIDATES, version).run_id
    trainer = as_user(server, "trainer", monkeypatch)
    refused = status_of(lambda: trainer.set_registered_model_alias(MODEL, "champion", "1"))
    assert refused == 403
    assert trainer.get_model_version_by_alias(MODEL, "champion").version == copy.version


@pytest.mark.parametrize("user", ["controller", "viewer"])
def test_the_controller_and_the_viewer_only_read(server, monkeypatch, user):
    version = candidate(server, monkeypatch)
    releaser = as_user(server, "releaser", monkeypatch)
    copy = releaser.copy_model_version(f"models:/{CANDIDATES}/{version}", MODEL)
    releaser.set_registered_model_alias(MODEL, "champion", copy.version)
    reader = as_user(server, user, monkeypatch)
    assert reader.get_model_version_by_alias(MODEL, "champion").version == copy.version
    assert status_of(lambda: reader.set_registered_model_alias(MODEL, "champion", "1")) == 403
    assert status_of(lambda: reader.set_model_version_tag(MODEL, copy.version, "k", "v")) == 403
    experiment = reader.get_experiment_by_name("tests").experiment_id
    assert status_of(lambda: reader.create_run(experiment)) == 403


def test_a_tracking_uri_carrying_credentials_is_refused_without_echoing_them(server, tmp_path):
    env = server.env(store_env(tmp_path), None)
    env["MLFLOW_TRACKING_URI"] = server.uri.replace(
        "//", f"//trainer:{server.passwords['trainer']}@"
    )
    result = run_step("steps.promote", env=env, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "MLFLOW_TRACKING_URI must be a URI without credentials" in result.stderr
    assert server.passwords["trainer"] not in result.stdout + result.stderr


def test_only_the_releasers_move_reaches_the_controller_on_read_only_credentials(
    server, tmp_path, monkeypatch
):
    """The whole flow: the trainer's pipeline, the releaser's promote, the real controller
    logged in as `controller`; the trainer's move of champion refused while the old version
    keeps serving; the releaser's next promotion rolled out."""
    from tests.support.rollout import running_controller

    base = store_env(tmp_path, MODEL_SERVERS="1", ROLLOUT_POLL_SECONDS="1")
    trainer_env, releaser_env = server.env(base, "trainer"), server.env(base, "releaser")
    preset = ("--preset", "notebook")
    run_step("steps.main", "--source", SMALL_SOURCE, *preset, env=trainer_env, cwd=tmp_path)
    first = candidates_newest(server, monkeypatch)
    run_step("steps.promote", "--model-version", first, env=releaser_env, cwd=tmp_path)
    served_first = as_user(server, "viewer", monkeypatch).get_model_version_by_alias(
        MODEL, "champion"
    )
    with running_controller(tmp_path / "controller", server.env(base, "controller")) as controller:
        controller.wait_served(served_first.version)
        run_step("steps.main", "--source", SMALL_SOURCE, *preset, env=trainer_env, cwd=tmp_path)
        second = candidates_newest(server, monkeypatch)
        refused = run_step(
            "steps.promote", "--model-version", second, env=trainer_env, cwd=tmp_path, check=False
        )
        assert refused.returncode == 1 and "Permission denied" in refused.stderr
        controller.wait_served(served_first.version, timeout=10)
        run_step(
            "steps.promote", "--model-version", second, "--force", "true",
            env=releaser_env, cwd=tmp_path,
        )  # fmt: skip
        champion = as_user(server, "viewer", monkeypatch).get_model_version_by_alias(
            MODEL, "champion"
        )
        assert champion.source == f"models:/{CANDIDATES}/{second}"
        controller.wait_served(champion.version)
        command_lines = [
            Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            for pid in [controller.process.pid, *map(int, controller.served()["pids"].values())]
        ]
    no_credential_anywhere(server, monkeypatch, command_lines)


def candidates_newest(server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> str:
    viewer = as_user(server, "viewer", monkeypatch)
    return str(max(int(v.version) for v in viewer.search_model_versions(f"name = '{CANDIDATES}'")))


def no_credential_anywhere(server, monkeypatch, command_lines: list[str]) -> None:
    admin = as_user(server, "admin", monkeypatch)
    runs = admin.search_runs([admin.get_experiment_by_name("tests").experiment_id])
    assert runs
    recorded = " ".join(
        f"{run.data.params} {run.data.tags} {run.info.artifact_uri}" for run in runs
    )
    for user, secret in server.passwords.items():
        assert secret not in recorded, f"{user}'s password in a run"
        assert all(secret not in line for line in command_lines), f"{user}'s password in argv"
    assert "@" not in " ".join(run.data.tags.get("mlflow.source.name", "") for run in runs)
