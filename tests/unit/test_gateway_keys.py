"""GATEWAY_API_KEYS_FILE: its format and errors, scopes, expiry, and reloads that never drop the
keys in force."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from config.settings import KEYS_CHECK_SECONDS, PROJECT_DIR, SettingsError
from gateway import auth
from gateway.app import create_app, gateway_of
from gateway.auth import KeyRing
from gateway.keyfile import ALL_SCOPES, parse_file
from tests.support.gateway import (
    ALICE_KEY,
    gateway_settings,
    sha256_hex,
    write_keys_file,
    write_model_info,
)

CAROL_KEY = "carol-0011223344556677"
DAVE_KEY = "dave-8899aabbccddeeff"


def sample(app, name: str, **labels: str) -> float:
    return gateway_of(app).metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.jsonl"
    write_keys_file(path, {"id": "carol", "sha256": sha256_hex(CAROL_KEY), "scopes": ["predict"]})
    return path


@pytest.fixture
def app(tmp_path: Path, keys_file: Path):
    write_model_info(tmp_path / "served-model.json")
    app = create_app(gateway_settings(tmp_path, GATEWAY_API_KEYS_FILE=str(keys_file)))
    yield app
    gateway_of(app).close()


def later(app) -> None:
    """Let the next request look at the keys file again."""
    gateway_of(app).keys._checked_at -= KEYS_CHECK_SECONDS


def get_model(app, key: str) -> int:
    return app.test_client().get("/model", headers={"X-API-Key": key}).status_code


def test_a_full_entry_is_parsed():
    (key,) = parse_file(
        json.dumps(
            {
                "id": "carol",
                "key": CAROL_KEY,
                "scopes": ["read"],
                "expires": "2027-01-31T01:00:00+01:00",
                "rate": 2.5,
                "burst": 5,
            }
        )
    )
    assert key.key_id == "carol"
    assert key.digest == hashlib.sha256(CAROL_KEY.encode()).digest()
    assert key.scopes == {"read"}
    assert key.expires == datetime(2027, 1, 31, tzinfo=UTC).timestamp()
    assert (key.rate, key.burst) == (2.5, 5)


def test_defaults_are_every_scope_no_expiry_and_the_gateways_rate():
    (key,) = parse_file(f'  {{"id": "carol", "sha256": "{sha256_hex(CAROL_KEY).upper()}"}}  ')
    assert (key.scopes, key.expires, key.rate, key.burst) == (ALL_SCOPES, None, None, None)


def test_an_id_may_have_several_keys_with_one_limit():
    text = "\n".join(
        json.dumps({"id": "carol", "key": key, "rate": 3}) for key in (CAROL_KEY, DAVE_KEY)
    )
    assert [key.key_id for key in parse_file(text)] == ["carol", "carol"]


WHERE = "GATEWAY_API_KEYS_FILE line 2"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("TOPSECRET", f"{WHERE} is not a JSON object"),
        ('["TOPSECRET"]', f"{WHERE} is not a JSON object"),
        ('{"key": "TOPSECRET"}', f"{WHERE}: id must be 1 to 64 letters, digits, '.', '_' or '-'"),
        (
            '{"id": "bad id", "key": "TOPSECRET"}',
            f"{WHERE}: id must be 1 to 64 letters, digits, '.', '_' or '-'",
        ),
        (
            '{"id": "d", "key": "TOPSECRET", "scope": ["read"]}',
            f"{WHERE} (id 'd'): unknown field(s) scope "
            "(allowed: id, sha256, key, scopes, expires, rate, burst)",
        ),
        ('{"id": "d"}', f"{WHERE} (id 'd'): give exactly one of sha256 (preferred) or key"),
        (
            f'{{"id": "d", "key": "TOPSECRET", "sha256": "{sha256_hex("x")}"}}',
            f"{WHERE} (id 'd'): give exactly one of sha256 (preferred) or key",
        ),
        ('{"id": "d", "key": ""}', f"{WHERE} (id 'd'): key must be a non-empty string"),
        ('{"id": "d", "sha256": "TOPSECRET"}', f"{WHERE} (id 'd'): sha256 must be 64 hex digits"),
        (
            '{"id": "d", "key": "TOPSECRET", "scopes": ["predict", "admin"]}',
            f"{WHERE} (id 'd'): scopes must be a non-empty list of outcomes, predict, read",
        ),
        (
            '{"id": "d", "key": "TOPSECRET", "scopes": []}',
            f"{WHERE} (id 'd'): scopes must be a non-empty list of outcomes, predict, read",
        ),
        (
            '{"id": "d", "key": "TOPSECRET", "expires": "2027-01-31"}',
            f"{WHERE} (id 'd'): expires must be an ISO 8601 time with a timezone, "
            "e.g. 2027-01-31T00:00:00Z",
        ),
        (
            '{"id": "d", "key": "TOPSECRET", "expires": "next year"}',
            f"{WHERE} (id 'd'): expires must be an ISO 8601 time with a timezone, "
            "e.g. 2027-01-31T00:00:00Z",
        ),
        (
            '{"id": "d", "key": "TOPSECRET", "rate": -1}',
            f"{WHERE} (id 'd'): rate must be a number >= 0 (requests per second; 0: none)",
        ),
        (
            '{"id": "d", "key": "TOPSECRET", "rate": "10/s"}',
            f"{WHERE} (id 'd'): rate must be a number >= 0 (requests per second; 0: none)",
        ),
        (
            '{"id": "d", "key": "TOPSECRET", "burst": 0.5}',
            f"{WHERE} (id 'd'): burst must be an integer >= 1 (requests)",
        ),
        (
            '{"id": "carol", "key": "TOPSECRET", "rate": 4}',
            "GATEWAY_API_KEYS_FILE: the entries of id 'carol' give different rate or burst "
            "(an id has one limit, shared by its keys)",
        ),
    ],
)
def test_a_bad_line_is_named_without_echoing_the_key(line, message):
    with pytest.raises(SettingsError) as caught:
        parse_file(f'{{"id": "carol", "key": "{CAROL_KEY}", "rate": 3}}\n{line}\n')
    assert str(caught.value) == message
    assert "TOPSECRET" not in str(caught.value)


def test_a_bad_file_stops_the_start(tmp_path, keys_file):
    keys_file.write_text('{"id": "carol"}\n')
    with pytest.raises(SettingsError, match="line 1 \\(id 'carol'\\): give exactly one"):
        create_app(gateway_settings(tmp_path, GATEWAY_API_KEYS_FILE=str(keys_file)))
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(SettingsError) as caught:
        create_app(gateway_settings(tmp_path, GATEWAY_API_KEYS_FILE=str(missing)))
    assert str(caught.value) == (
        f"GATEWAY_API_KEYS_FILE {missing} cannot be read: No such file or directory"
    )


def test_an_id_in_both_sources_stops_the_start(tmp_path, keys_file):
    write_keys_file(keys_file, {"id": "alice", "key": CAROL_KEY})
    with pytest.raises(SettingsError) as caught:
        create_app(gateway_settings(tmp_path, GATEWAY_API_KEYS_FILE=str(keys_file)))
    assert str(caught.value) == (
        "key id(s) alice in both GATEWAY_API_KEYS and GATEWAY_API_KEYS_FILE"
    )


def test_the_file_alone_is_enough(tmp_path, keys_file):
    settings = gateway_settings(tmp_path, GATEWAY_API_KEYS_FILE=str(keys_file))
    ring = KeyRing(settings.model_copy(update={"gateway_api_keys": ""}))
    assert ring.current().identify(CAROL_KEY) == "carol"


def test_a_new_key_works_and_a_removed_one_is_refused_after_the_check(app, keys_file):
    assert get_model(app, ALICE_KEY) == 200  # GATEWAY_API_KEYS: every scope
    write_keys_file(keys_file, {"id": "dave", "sha256": sha256_hex(DAVE_KEY)})
    assert get_model(app, DAVE_KEY) == 403  # not looked at yet: within KEYS_CHECK_SECONDS
    later(app)
    assert get_model(app, DAVE_KEY) == 200
    response = app.test_client().post("/invocations", headers={"X-API-Key": CAROL_KEY})
    assert response.json["error_code"] == "INVALID_API_KEY"
    assert get_model(app, ALICE_KEY) == 200
    assert sample(app, "gateway_api_keys_reloads_total", result="loaded") == 2


@pytest.mark.parametrize(
    "text",
    [
        '{"id": "dave", "sha256": "abc"}\n',  # a typo
        '{"id": "dave", "sha256": "',  # cut while being written
        "",  # truncated: no key would be left
        b"\xff\xfe".decode("latin-1"),  # not UTF-8 once encoded below
    ],
)
def test_a_bad_change_keeps_the_keys_in_force_and_is_counted_once(app, keys_file, text, caplog):
    keys_file.write_bytes(text.encode("latin-1"))
    for _ in range(2):
        later(app)
        assert get_model(app, ALICE_KEY) == 200
        response = app.test_client().post("/invocations", headers={"X-API-Key": CAROL_KEY})
        assert response.status_code != 403  # carol still authenticated
    assert sample(app, "gateway_api_keys_reloads_total", result="rejected") == 1
    assert "API keys file refused, the 3 keys in force kept" in caplog.text
    write_keys_file(keys_file, {"id": "dave", "sha256": sha256_hex(DAVE_KEY)})
    later(app)
    assert get_model(app, DAVE_KEY) == 200


def test_a_deleted_file_keeps_the_keys_until_it_comes_back(app, keys_file):
    keys_file.unlink()
    later(app)
    assert get_model(app, ALICE_KEY) == 200
    assert sample(app, "gateway_api_keys_reloads_total", result="rejected") == 1
    write_keys_file(keys_file, {"id": "dave", "sha256": sha256_hex(DAVE_KEY)})
    later(app)
    assert get_model(app, DAVE_KEY) == 200


def test_a_key_without_the_scope_is_refused_with_what_it_needs(app):
    response = app.test_client().get("/model", headers={"X-API-Key": CAROL_KEY})
    assert response.status_code == 403
    assert response.json["error_code"] == "FORBIDDEN_SCOPE"
    assert response.json["message"] == (
        "the API key of 'carol' may not use GET /model: that needs scope read, the key has predict"
    )
    assert sample(app, "gateway_auth_failures_total", reason="scope") == 1


def test_metrics_behind_a_key_need_the_read_scope(tmp_path, keys_file):
    write_keys_file(keys_file, {"id": "prometheus", "key": DAVE_KEY, "scopes": ["read"]})
    settings = gateway_settings(
        tmp_path, GATEWAY_API_KEYS_FILE=str(keys_file), GATEWAY_METRICS_PUBLIC="false"
    )
    app = create_app(settings)
    client = app.test_client()
    assert client.get("/metrics", headers={"X-API-Key": DAVE_KEY}).status_code == 200
    assert client.post("/invocations", headers={"X-API-Key": DAVE_KEY}).status_code == 403
    gateway_of(app).close()


def test_an_expired_key_is_refused_and_its_successor_works(app, keys_file):
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    write_keys_file(
        keys_file,
        {"id": "dave", "sha256": sha256_hex(CAROL_KEY), "expires": past},
        {"id": "dave", "sha256": sha256_hex(DAVE_KEY), "expires": "2999-01-01T00:00:00Z"},
    )
    later(app)
    response = app.test_client().get("/model", headers={"X-API-Key": CAROL_KEY})
    assert response.status_code == 403
    assert response.json == {
        "error_code": "EXPIRED_API_KEY",
        "message": f"the API key of 'dave' expired at {past}",
        "request_id": response.headers["X-Request-ID"],
    }
    assert get_model(app, DAVE_KEY) == 200
    assert sample(app, "gateway_auth_failures_total", reason="expired") == 1


def test_requests_are_counted_per_key_id_up_to_the_bound(tmp_path, keys_file):
    write_keys_file(
        keys_file,
        {"id": "carol", "key": CAROL_KEY},
        {"id": "dave", "key": DAVE_KEY},
    )
    write_model_info(tmp_path / "served-model.json")
    settings = gateway_settings(
        tmp_path, GATEWAY_API_KEYS_FILE=str(keys_file), GATEWAY_METRICS_KEY_IDS="2"
    )
    app = create_app(settings)  # ids in order: alice, bob (GATEWAY_API_KEYS), carol, dave
    assert sample(app, "gateway_client_requests_total", key_id="bob") == 0  # present at 0
    for key in (ALICE_KEY, ALICE_KEY, CAROL_KEY, DAVE_KEY):
        assert get_model(app, key) == 200
    assert sample(app, "gateway_client_requests_total", key_id="alice") == 2
    assert sample(app, "gateway_client_requests_total", key_id="other") == 2
    assert (
        gateway_of(app).metrics.registry.get_sample_value(
            "gateway_client_requests_total", {"key_id": "carol"}
        )
        is None
    )
    gateway_of(app).close()


def test_every_endpoint_behind_a_key_has_its_scope(app):
    public = auth.PUBLIC_ENDPOINTS
    keyed = {rule.endpoint for rule in app.url_map.iter_rules()} - public - {"static"}
    assert keyed == set(auth.ENDPOINT_SCOPES)  # a new endpoint: give it a scope there


def test_the_compose_example_is_a_valid_file_once_its_digests_are_filled_in():
    example = PROJECT_DIR / "docker" / "gateway-keys" / "keys.example.jsonl"
    with pytest.raises(SettingsError, match="line 4 \\(id 'client-b'\\): sha256 must be 64"):
        parse_file(example.read_text())  # as committed: refused, never half-working
    keys = parse_file(example.read_text().replace("REPLACE_WITH_SHA256_HEX", sha256_hex("k")))
    assert [(key.key_id, sorted(key.scopes)) for key in keys] == [
        ("client-b", ["predict"]),
        ("dashboards", ["read"]),
    ]
