"""API keys: parsing GATEWAY_API_KEYS, and every way a request can be (not) authenticated."""

from __future__ import annotations

import hashlib

import pytest

from config.settings import SettingsError
from gateway.app import create_app, gateway_of
from gateway.auth import ApiKeys
from tests.support.gateway import ALICE_KEY, BOB_KEY, gateway_settings, read_log


@pytest.fixture
def client(app):
    return app.test_client()


def sample(app, name: str, **labels: str) -> float:
    return gateway_of(app).metrics.registry.get_sample_value(name, labels) or 0.0


def test_plain_and_sha256_keys_are_identified():
    digest = hashlib.sha256(b"second-key").hexdigest()
    keys = ApiKeys.parse(f" first:first-key , second:sha256:{digest},")
    assert len(keys) == 2
    assert keys.identify("first-key") == "first"
    assert keys.identify("second-key") == "second"
    assert keys.identify("sha256:" + digest) is None
    assert keys.identify("nope") is None


def test_key_may_contain_colons():
    assert ApiKeys.parse("ops:a:b:c").identify("a:b:c") == "ops"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "ok:k1,TOPSECRET",
            "GATEWAY_API_KEYS entry 2 has no ':' (expected id:key or id:sha256:<64 hex digits>)",
        ),
        (
            "ok:k1,bad id:TOPSECRET",
            "GATEWAY_API_KEYS entry 2: the key id must be 1 to 64 letters, "
            "digits, '.', '_' or '-' (expected id:key or "
            "id:sha256:<64 hex digits>)",
        ),
        (
            "ci:sha256:TOPSECRET",
            "GATEWAY_API_KEYS entry 1 (id 'ci'): the sha256 digest must be 64 hex digits",
        ),
        (
            "ci:",
            "GATEWAY_API_KEYS entry 1 (id 'ci'): the key is empty (expected id:key or "
            "id:sha256:<64 hex digits>)",
        ),
        ("ci:TOPSECRET,ci:other", "GATEWAY_API_KEYS: duplicate key id(s) ci"),
    ],
)
def test_malformed_entry_is_named_without_echoing_the_key(raw, message):
    with pytest.raises(SettingsError) as caught:
        ApiKeys.parse(raw)
    assert str(caught.value) == message
    assert "TOPSECRET" not in str(caught.value)


def test_no_keys_refuses_to_start(tmp_path):
    with pytest.raises(
        SettingsError, match=r"^no API key: set GATEWAY_API_KEYS .*GATEWAY_ALLOW_NO_AUTH"
    ):
        create_app(gateway_settings(tmp_path, GATEWAY_API_KEYS=""))


def test_malformed_keys_refuse_to_start(tmp_path):
    with pytest.raises(SettingsError, match="entry 1 has no ':'"):
        create_app(gateway_settings(tmp_path, GATEWAY_API_KEYS="justakey"))


def test_opt_out_accepts_requests_as_anonymous(tmp_path):
    app = create_app(gateway_settings(tmp_path, GATEWAY_API_KEYS="", GATEWAY_ALLOW_NO_AUTH="true"))
    assert app.test_client().get("/model").status_code == 503  # past auth: no model info
    gateway_of(app).request_log.flush()
    assert read_log(tmp_path / "requests.jsonl")[-1]["key_id"] == "anonymous"


def test_missing_key_is_401(app, client):
    response = client.get("/model")
    assert response.status_code == 401
    assert response.json["error_code"] == "MISSING_API_KEY"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert sample(app, "gateway_auth_failures_total", reason="missing") == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": BOB_KEY + "x"},
    ],
)
def test_wrong_key_is_403(app, client, headers):
    response = client.get("/model", headers=headers)
    assert response.status_code == 403
    assert response.json["error_code"] == "INVALID_API_KEY"
    assert sample(app, "gateway_auth_failures_total", reason="invalid") == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        {"X-API-Key": "  "},
    ],
)
def test_no_usable_key_is_401(client, headers):
    assert client.get("/model", headers=headers).status_code == 401


@pytest.mark.parametrize(
    ("headers", "key_id"),
    [
        ({"X-API-Key": ALICE_KEY}, "alice"),
        ({"Authorization": f"Bearer {ALICE_KEY}"}, "alice"),
        ({"Authorization": f"bearer {BOB_KEY}"}, "bob"),
    ],
)
def test_valid_key_in_either_header_passes(tmp_path, app, client, headers, key_id):
    response = client.get("/model", headers=headers)
    assert response.status_code == 503  # authenticated; no served-model file in this test
    assert response.json["error_code"] == "MODEL_INFO_UNAVAILABLE"
    gateway_of(app).request_log.flush()
    assert read_log(tmp_path / "requests.jsonl")[-1]["key_id"] == key_id


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/health", 200),
        ("/ready", 503),
        ("/docs", 200),
        ("/openapi.json", 200),
        ("/metrics", 200),
    ],
)
def test_public_endpoints_need_no_key(client, path, status):
    assert client.get(path).status_code == status  # /ready: nothing listens upstream


def test_metrics_need_a_key_when_not_public(tmp_path):
    client = create_app(gateway_settings(tmp_path, GATEWAY_METRICS_PUBLIC="false")).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": ALICE_KEY}).status_code == 200


def test_unknown_path_is_404_before_auth(client):
    response = client.get("/admin")
    assert response.status_code == 404
    assert response.json["error_code"] == "NOT_FOUND"


def test_keys_never_reach_the_log_or_metrics(tmp_path, app, client):
    client.get("/model", headers={"X-API-Key": ALICE_KEY})
    client.get("/model", headers={"Authorization": f"Bearer {BOB_KEY}"})
    client.get("/model", headers={"X-API-Key": "wrong-key-value"})
    gateway_of(app).request_log.flush()
    text = (tmp_path / "requests.jsonl").read_text()
    metrics = client.get("/metrics").get_data(as_text=True)
    for secret in (ALICE_KEY, BOB_KEY, "wrong-key-value"):
        assert secret not in text
        assert secret not in metrics
    assert [line["key_id"] for line in read_log(tmp_path / "requests.jsonl")[:3]] == [
        "alice",
        "bob",
        None,
    ]
