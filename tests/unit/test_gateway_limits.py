"""Rate limits per key id: the GCRA rule on a shared file, and the 429 the gateway answers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway import limits
from gateway.app import create_app, gateway_of
from gateway.limits import RateLimiter
from tests.support.gateway import ALICE_KEY, BOB_KEY, gateway_settings, write_model_info

CAROL_KEY = "carol-0011223344556677"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(tmp_path: Path, clock: Clock):
    limiter = RateLimiter(tmp_path / "limits", clock)
    yield limiter
    limiter.close()


def passed(limiter: RateLimiter, key_id: str, n: int, rate: float, burst: int) -> int:
    return sum(limiter.wait(key_id, rate, burst) == 0 for _ in range(n))


def test_a_burst_then_one_request_per_interval(limiter, clock):
    assert passed(limiter, "alice", 5, rate=10, burst=3) == 3
    assert limiter.wait("alice", 10, 3) == pytest.approx(0.1)
    clock.now += 0.05
    assert limiter.wait("alice", 10, 3) == pytest.approx(0.05)
    clock.now += 0.05
    assert passed(limiter, "alice", 3, rate=10, burst=3) == 1
    clock.now += 10  # idle: the burst is back, not more
    assert passed(limiter, "alice", 5, rate=10, burst=3) == 3


def test_ids_are_limited_apart(limiter):
    assert passed(limiter, "alice", 10, rate=1, burst=2) == 2
    assert passed(limiter, "bob", 10, rate=1, burst=2) == 2


def test_two_limiters_on_one_file_share_the_limit(tmp_path, limiter, clock):
    other = RateLimiter(tmp_path / "limits", clock)  # as another worker maps it
    try:
        allowed = 0
        for _ in range(100):  # 10 s at 10 requests/s, through both in turn
            allowed += passed(limiter, "alice", 1, rate=2, burst=4)
            allowed += passed(other, "alice", 1, rate=2, burst=4)
            clock.now += 0.1
        assert allowed == 4 + 2 * 10 - 1  # the burst, then 2/s (the last interval not over)
    finally:
        other.close()


def test_a_tat_from_another_boot_is_reset(tmp_path, clock):
    before = RateLimiter(tmp_path / "limits", Clock())
    before.wait("alice", 1, 1)
    before.close()
    clock.now = 5.0  # CLOCK_MONOTONIC started again
    after = RateLimiter(tmp_path / "limits", clock)
    try:
        assert after.wait("alice", 1, 1) == 0
    finally:
        after.close()


def test_slots_are_reused_once_their_tat_passed(tmp_path, clock, monkeypatch, caplog):
    monkeypatch.setattr(limits, "SLOTS", 2)
    limiter = RateLimiter(tmp_path / "small", clock)
    try:
        assert passed(limiter, "a", 3, rate=1, burst=1) == 1
        assert passed(limiter, "b", 3, rate=1, burst=1) == 1
        with caplog.at_level(logging.WARNING, logger="gateway.limits"):
            assert passed(limiter, "c", 3, rate=1, burst=1) == 3  # no slot: not limited
        assert caplog.messages == ["all 2 rate-limit slots busy: c not limited"]  # once
        clock.now += 1.5
        assert passed(limiter, "b", 3, rate=1, burst=1) == 1
        assert passed(limiter, "c", 3, rate=1, burst=1) == 1  # took a's slot
        assert passed(limiter, "a", 3, rate=1, burst=1) == 3  # b and c busy
        clock.now += 1.5
        assert passed(limiter, "a", 3, rate=1, burst=1) == 1
    finally:
        limiter.close()


@pytest.fixture
def app(tmp_path: Path):
    write_model_info(tmp_path / "served-model.json")
    keys = tmp_path / "keys.jsonl"
    carol = {"id": "carol", "key": CAROL_KEY, "rate": 0}
    keys.write_text(json.dumps(carol) + "\n")
    settings = gateway_settings(tmp_path, GATEWAY_RATE_LIMIT="0.5", GATEWAY_API_KEYS_FILE=str(keys))
    app = create_app(settings)
    yield app
    gateway_of(app).close()


def sample(app, name: str, **labels: str) -> float:
    return gateway_of(app).metrics.registry.get_sample_value(name, labels) or 0.0


def test_over_its_rate_a_client_gets_429_and_another_does_not(app):
    client = app.test_client()
    statuses = [client.get("/model", headers={"X-API-Key": ALICE_KEY}).status_code for _ in "abc"]
    assert statuses == [200, 429, 429]  # burst: one second's worth, at least 1
    refused = client.get("/model", headers={"X-API-Key": ALICE_KEY})
    assert refused.headers["Retry-After"] == "2"
    assert refused.json["error_code"] == "RATE_LIMITED"
    assert refused.json["message"].startswith(
        "key id 'alice' is over its rate of 0.5 requests/s (burst 1): retry in 1.9"
    )
    assert refused.json["request_id"] == refused.headers["X-Request-ID"]
    assert client.get("/model", headers={"X-API-Key": BOB_KEY}).status_code == 200
    assert sample(app, "gateway_rate_limited_total", key_id="alice") == 3
    assert sample(app, "gateway_rate_limited_total", key_id="bob") == 0
    assert sample(app, "gateway_client_requests_total", key_id="alice") == 4
    assert sample(app, "gateway_requests_total", endpoint="/model", status="429") == 3


def test_a_rate_of_its_own_overrides_the_default(app):
    client = app.test_client()
    statuses = {client.get("/model", headers={"X-API-Key": CAROL_KEY}).status_code for _ in "abc"}
    assert statuses == {200}  # carol: rate 0, no limit


def test_public_endpoints_and_refused_keys_are_not_limited(app):
    client = app.test_client()
    assert {client.get("/health").status_code for _ in "abc"} == {200}
    assert {client.get("/model", headers={"X-API-Key": "x"}).status_code for _ in "abc"} == {403}
