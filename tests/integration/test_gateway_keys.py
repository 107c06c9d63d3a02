"""Keys and limits in the real gateway (gunicorn, 2 workers): a changed keys file reaches every
worker within the documented delay, a bad one changes nothing, and one rate holds across the
workers. The gateway answers GET /model itself: no model server is needed for these."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from config.settings import KEYS_CHECK_SECONDS
from tests.support.gateway import (
    ALICE_KEY,
    RunningGateway,
    metric_samples,
    metric_sum,
    per_worker,
    running_gateway,
    sha256_hex,
    write_keys_file,
    write_model_info,
)
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

CAROL_KEY = "carol-0011223344556677"
DAVE_KEY = "dave-8899aabbccddeeff"
CAROL = {"id": "carol", "sha256": sha256_hex(CAROL_KEY), "rate": 20, "burst": 5}
# The delay the README documents: one check interval, plus time for the request itself.
DELAY = KEYS_CHECK_SECONDS + 0.5


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("secret") / "keys.jsonl"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, keys_file) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("gateway")
    write_model_info(state / "served-model.json")
    write_keys_file(keys_file, CAROL)
    env = {"GATEWAY_API_KEYS_FILE": str(keys_file)}
    with running_gateway(
        state, f"http://127.0.0.1:{free_port()}", state / "served-model.json", extra_env=env
    ) as running:
        yield running


def statuses(gateway: RunningGateway, key: str, n: int) -> Counter:
    """Statuses of `n` GET /model, each on a new connection (so that both workers answer)."""
    return Counter(
        requests.get(f"{gateway.url}/model", headers={"X-API-Key": key}, timeout=5).status_code
        for _ in range(n)
    )


def test_a_key_added_then_removed_reaches_every_worker_within_the_delay(gateway, keys_file):
    assert statuses(gateway, DAVE_KEY, 4) == {403: 4}
    write_keys_file(keys_file, CAROL, {"id": "dave", "sha256": sha256_hex(DAVE_KEY)})
    time.sleep(DELAY)
    assert statuses(gateway, DAVE_KEY, 20) == {200: 20}
    write_keys_file(keys_file, CAROL)
    time.sleep(DELAY)
    assert statuses(gateway, DAVE_KEY, 20) == {403: 20}
    assert statuses(gateway, ALICE_KEY, 10) == {200: 10}  # GATEWAY_API_KEYS: untouched


def test_a_bad_file_keeps_the_keys_and_is_counted(gateway, keys_file):
    before = metric_sum(
        metric_samples(gateway), "gateway_api_keys_reloads_total", result="rejected"
    )
    keys_file.write_text('{"id": "carol", "sha256": "not a digest"}\n')
    time.sleep(DELAY)
    assert statuses(gateway, CAROL_KEY, 4) == {200: 4}
    rejected = metric_sum(
        metric_samples(gateway), "gateway_api_keys_reloads_total", result="rejected"
    )
    assert 1 <= rejected - before <= 2  # once per worker that looked
    write_keys_file(keys_file, CAROL)
    time.sleep(DELAY)


def hammer(gateway: RunningGateway, key: str, clients: int, seconds: float) -> Counter:
    """`clients` threads as fast as they can, each request on a new connection (so that both
    workers answer: a keep-alive connection stays with the worker that accepted it)."""
    counts: Counter = Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def run() -> None:
        while time.monotonic() < end:
            response = requests.get(f"{gateway.url}/model", headers={"X-API-Key": key}, timeout=5)
            with lock:
                counts[response.status_code] += 1

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def test_one_rate_holds_across_the_workers(gateway):
    time.sleep(CAROL["burst"] / CAROL["rate"])  # the burst back, whatever ran before
    before = per_worker(gateway, "gateway_client_requests_total", key_id="carol")
    seconds = 3.0
    counts = hammer(gateway, CAROL_KEY, clients=8, seconds=seconds)
    expected = CAROL["burst"] + CAROL["rate"] * seconds
    assert set(counts) == {200, 429}
    assert abs(counts[200] - expected) <= 0.1 * expected, counts
    served = per_worker(gateway, "gateway_client_requests_total", key_id="carol")
    assert all(served[pid] > before.get(pid, 0) for pid in gateway.worker_pids()), served


def test_a_refusal_is_the_json_error_with_retry_after(gateway):
    with requests.Session() as session:
        answers = [
            session.get(f"{gateway.url}/model", headers={"X-API-Key": CAROL_KEY})
            for _ in range(CAROL["burst"] + 1)
        ]
    refused = answers[-1]
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["Content-Type"] == "application/json"
    assert refused.json()["error_code"] == "RATE_LIMITED"
    assert refused.json()["message"].startswith(
        "key id 'carol' is over its rate of 20 requests/s (burst 5): retry in 0.0"
    )
