"""Settings: defaults, overrides, clear errors, and .env.example documenting every variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pyfunc.settings as settings_module
from pyfunc.settings import PROJECT_DIR, Settings, SettingsError

ENV_EXAMPLE = PROJECT_DIR / ".env.example"


def variables_read_by_settings() -> set[str]:
    source = Path(settings_module.__file__).read_text()
    return set(re.findall(r'(?:_str|_int|_float|_bool|env\.get)\(\s*(?:env, )?"([A-Z_]+)"', source))


def test_defaults_follow_the_design_contract():
    settings = Settings.from_env({})
    assert settings.model_uri == "models:/property-friends@champion"
    assert (settings.model_port, settings.gateway_port) == (5001, 8000)
    assert settings.gateway_upstream_url == "http://127.0.0.1:5001"
    assert settings.tracking_uri == f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"


def test_model_uri_follows_name_and_alias_and_upstream_follows_port():
    settings = Settings.from_env({"MODEL_NAME": "m", "MODEL_ALIAS": "staging",
                                  "MODEL_PORT": "6000", "STATE_DIR": "/tmp/x"})
    assert settings.model_uri == "models:/m@staging"
    assert settings.gateway_upstream_url == "http://127.0.0.1:6000"
    assert settings.model_info_path == Path("/tmp/x/served-model.json")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("MODEL_PORT", "50o1", "MODEL_PORT must be an integer, got '50o1'"),
    ("GATEWAY_READ_TIMEOUT_SECONDS", "ten", "GATEWAY_READ_TIMEOUT_SECONDS must be a number"),
    ("GATEWAY_LOG_PAYLOADS", "maybe", "GATEWAY_LOG_PAYLOADS must be true or false"),
])
def test_a_bad_value_names_the_variable(name, value, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({name: value})


def test_redacted_never_shows_the_keys():
    shown = Settings.from_env({"GATEWAY_API_KEYS": "a:supersecret"}).redacted()
    assert "supersecret" not in repr(shown)


def test_env_example_lists_exactly_the_variables_settings_read():
    documented = set(re.findall(r"^([A-Z_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    read = variables_read_by_settings()
    assert read, "no variable found in pyfunc/settings.py"
    assert documented == read
