"""Settings: defaults, derived defaults, `.env`, clear errors, and the files that list them
(.env.example, the Makefile) checked against the declarations in config/settings.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import PROJECT_DIR, Settings, SettingsError, env_example

ENV_EXAMPLE = PROJECT_DIR / ".env.example"
VARIABLES = {name.upper() for name in Settings.model_fields}
MAKE_ONLY = {"PATH"}  # exported by the Makefile for its own commands, not a setting


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory and an environment without any setting."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_follow_the_design_contract():
    settings = Settings.from_env({})
    assert settings.model_uri == "models:/property-friends@champion"
    assert (settings.model_port, settings.gateway_port) == (5001, 8000)
    assert settings.gateway_upstream_url == "http://127.0.0.1:5001"
    assert settings.mlflow_tracking_uri == f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
    assert settings.gateway_request_log == PROJECT_DIR / ".run" / "logs" / "requests.jsonl"


def test_model_uri_follows_name_and_alias_and_upstream_follows_port():
    settings = Settings.from_env(
        {"MODEL_NAME": "m", "MODEL_ALIAS": "staging", "MODEL_PORT": "6000", "STATE_DIR": "/tmp/x"}
    )
    assert settings.model_uri == "models:/m@staging"
    assert settings.gateway_upstream_url == "http://127.0.0.1:6000"
    assert settings.model_info_path == Path("/tmp/x/served-model.json")


def test_values_are_stripped():
    settings = Settings.from_env(
        {"MODEL_PORT": " 6000 ", "GATEWAY_LOG_PAYLOADS": " off ", "GATEWAY_API_KEYS": " a:b\n"}
    )
    assert (settings.model_port, settings.gateway_log_payloads) == (6000, False)
    assert settings.gateway_api_keys == "a:b"


def test_an_empty_value_means_the_default():
    assert Settings.from_env({"MODEL_PORT": " ", "GATEWAY_LOG_PAYLOADS": ""}) == Settings.from_env(
        {}
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MODEL_PORT": "50o1"}, "MODEL_PORT must be an integer, got '50o1'"),
        (
            {"GATEWAY_READ_TIMEOUT_SECONDS": "ten"},
            "GATEWAY_READ_TIMEOUT_SECONDS must be a number, got 'ten'",
        ),
        (
            {"GATEWAY_LOG_PAYLOADS": "maybe"},
            "GATEWAY_LOG_PAYLOADS must be true or false, got 'maybe'",
        ),
        ({"MODEL_WORKERS": "0"}, "MODEL_WORKERS must be greater than 0, got '0'"),
        ({"GATEWAY_PORT": "80000"}, "GATEWAY_PORT must be less than 65536, got '80000'"),
        (
            {"MODEL_PORT": "abc", "GATEWAY_METRICS_PUBLIC": "2"},
            "MODEL_PORT must be an integer, got 'abc'; "
            "GATEWAY_METRICS_PUBLIC must be true or false, got '2'",
        ),
    ],
)
def test_a_bad_value_names_the_variable_and_what_is_allowed(environ, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    assert str(caught.value) == message


def test_redacted_and_repr_never_show_the_keys():
    settings = Settings.from_env({"GATEWAY_API_KEYS": "a:supersecret"})
    assert settings.gateway_api_keys == "a:supersecret"
    assert settings.redacted()["gateway_api_keys"] == "<set>"
    assert "supersecret" not in repr(settings.redacted()) + repr(settings)


def test_dotenv_in_the_current_directory_is_read_and_the_environment_wins(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
):
    (workdir / ".env").write_text("MODEL_NAME=from-file\nMODEL_PORT=6001\nOTHER=ignored\n")
    monkeypatch.setenv("MODEL_NAME", "from-env")
    settings = Settings.from_env()
    assert (settings.model_name, settings.model_port) == ("from-env", 6001)
    assert settings.model_uri == "models:/from-env@champion"
    assert settings.gateway_upstream_url == "http://127.0.0.1:6001"


def test_given_values_alone_ignore_the_environment_and_dotenv(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
):
    (workdir / ".env").write_text("MODEL_PORT=6001\n")
    monkeypatch.setenv("MODEL_NAME", "from-env")
    settings = Settings.from_env({"GATEWAY_PORT": "9000"})
    assert (settings.model_name, settings.model_port, settings.gateway_port) == (
        "property-friends",
        5001,
        9000,
    )


def test_a_bad_value_in_dotenv_names_the_variable(workdir: Path):
    (workdir / ".env").write_text("GATEWAY_MAX_BODY_BYTES=8MB\n")
    with pytest.raises(
        SettingsError,
        match=r"^GATEWAY_MAX_BODY_BYTES must be an integer, "
        r"got '8MB'$",
    ):
        Settings.from_env()


@pytest.mark.parametrize("command", [["steps.promote"], ["serving.serve"]])
def test_a_cli_given_a_bad_value_exits_with_one_line(workdir: Path, command: list[str]):
    (workdir / ".env").write_text("GATEWAY_LOG_PAYLOADS=maybe\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr == "Error: GATEWAY_LOG_PAYLOADS must be true or false, got 'maybe'\n"


def test_env_example_is_the_one_the_readme_command_writes(workdir: Path):
    command = "python -m config.settings > .env.example"
    assert f"\n{command}" in (PROJECT_DIR / "README.md").read_text()
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_DIR),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run(["bash", "-c", command], cwd=workdir, env=env, check=True, timeout=60)
    assert (workdir / ".env.example").read_text() == ENV_EXAMPLE.read_text() == env_example()


def test_env_example_lists_every_variable_once_and_copied_to_dotenv_gives_the_defaults(
    workdir: Path,
):
    listed = re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    assert sorted(listed) == sorted(VARIABLES)
    (workdir / ".env").write_text(ENV_EXAMPLE.read_text())
    assert Settings.from_env() == Settings.from_env({})


def test_what_the_makefile_exports_is_declared_with_the_same_defaults(workdir: Path):
    makefile = PROJECT_DIR / "Makefile"
    exported = {
        name
        for line in re.findall(
            r"^export (.+?)(?:\s*[:?]?=.*)?$", makefile.read_text(), flags=re.MULTILINE
        )
        for name in line.split()
    }
    settings = exported - MAKE_ONLY
    assert {"MODEL_PORT", "GATEWAY_PORT", "STATE_DIR"} <= settings <= VARIABLES
    rule = "print-%: ; @echo $($*)"
    values = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "-C",
            str(PROJECT_DIR),
            "--eval",
            rule,
            *(f"print-{name}" for name in sorted(settings)),
        ],
        env={**os.environ, "MAKEFLAGS": ""},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    defaults = Settings.from_env({})
    for name, value in zip(sorted(settings), values, strict=True):
        field = name.lower()
        assert getattr(Settings.from_env({name: value}), field) == getattr(defaults, field), (
            f"the Makefile's {name}={value} is not the declared default"
        )


def test_a_tracking_uri_with_a_login_is_refused_without_echoing_it():
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"MLFLOW_TRACKING_URI": "http://trainer:s3cret@mlflow:5000"})
    assert str(refused.value) == (
        "MLFLOW_TRACKING_URI must be a URI without credentials (set MLFLOW_TRACKING_USERNAME "
        "and MLFLOW_TRACKING_PASSWORD instead)"
    )
    assert "s3cret" not in repr(Settings.from_env({"MLFLOW_TRACKING_PASSWORD": "s3cret"}))


def test_the_candidate_model_is_the_served_one_unless_set_apart():
    assert Settings.from_env({"MODEL_NAME": "m"}).candidate_model_name == "m"
    assert Settings.from_env({"CANDIDATE_MODEL_NAME": "c"}).candidate_model_name == "c"
