"""Keys and limits under 16 clients, through the real gateway (2 workers) to the real model
server: a key added to the keys file is accepted and a removed one refused within the documented
delay, and a file with a typo changes nothing, while 8 clients of another key see no failure;
8 clients of a key over its rate get 429s, no failure, and the rate holds within 10% across the
workers, while the other key gets no 429 at all."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from config.settings import KEYS_CHECK_SECONDS
from tests.support.gateway import (
    BOB_KEY,
    LoadClients,
    RunningGateway,
    Shot,
    per_worker,
    running_gateway,
    sha256_hex,
    write_keys_file,
)
from tests.support.stack import ModelServer
from tests.support.traffic import listings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAROL_KEY = "carol-0011223344556677"
DAVE_KEY = "dave-8899aabbccddeeff"
CAROL = {"id": "carol", "sha256": sha256_hex(CAROL_KEY), "scopes": ["predict"], "rate": 25}
DAVE = {"id": "dave", "sha256": sha256_hex(DAVE_KEY)}
DELAY = KEYS_CHECK_SECONDS + 0.5  # as README documents: the check interval, and the request
PROBES = 20


@pytest.fixture(scope="module")
def gateway(model_server: ModelServer, tmp_path_factory) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("keys-load")
    keys_file = state / "keys.jsonl"
    write_keys_file(keys_file, CAROL)
    with running_gateway(
        state,
        model_server.url,
        info_path=model_server.info_path,
        workers=2,
        extra_env={"GATEWAY_API_KEYS_FILE": str(keys_file)},
    ) as running:
        yield running


def shot(key: str) -> Shot:
    body = json.dumps({"dataframe_records": listings(1)}).encode()
    return Shot("one-row", body, 1, {"X-API-Key": key})


def probe(gateway: RunningGateway, key: str) -> Counter:
    """Statuses of PROBES predictions, each on a new connection, so both workers answer."""
    body = json.dumps({"dataframe_records": listings(1)})
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    return Counter(
        requests.post(
            f"{gateway.url}/invocations", data=body, headers=headers, timeout=30
        ).status_code
        for _ in range(PROBES)
    )


def rotate(gateway: RunningGateway) -> list[Counter]:
    """Add dave, remove him, write a typo, put carol back: what dave's probes got after each."""
    keys_file = gateway.state_dir / "keys.jsonl"
    seen = [probe(gateway, DAVE_KEY)]
    write_keys_file(keys_file, CAROL, DAVE)
    time.sleep(DELAY)
    seen.append(probe(gateway, DAVE_KEY))
    write_keys_file(keys_file, CAROL)
    time.sleep(DELAY)
    seen.append(probe(gateway, DAVE_KEY))
    keys_file.write_text(json.dumps(CAROL) + "\n" + '{"id": "dave", "sha256": "typo"}\n')
    time.sleep(DELAY)
    seen.append(probe(gateway, CAROL_KEY))  # still accepted; her load takes most of her rate
    write_keys_file(keys_file, CAROL)
    return seen


def test_rotation_and_limits_under_16_clients(gateway: RunningGateway):
    before = per_worker(gateway, "gateway_client_requests_total", key_id="carol")
    bob = LoadClients(gateway.url, [shot(BOB_KEY)], 8, prefix="bob").start()
    carol = LoadClients(gateway.url, [shot(CAROL_KEY)], 8, prefix="carol").start()
    time.sleep(2)
    seen = rotate(gateway)
    time.sleep(2)
    carol_sent, bob_sent = carol.stop(), bob.stop()

    assert seen[:3] == [{403: PROBES}, {200: PROBES}, {403: PROBES}]
    assert set(seen[3]) <= {200, 429}  # carol's key kept: limited, never 403
    assert Counter(s.status for s in bob_sent) == {200: len(bob_sent)}
    assert len(bob_sent) > 100
    statuses = Counter(s.status for s in carol_sent)
    assert set(statuses) == {200, 429}, statuses
    first = min(s.started for s in carol_sent)
    last = max(s.started for s in carol_sent)
    probes_passed = seen[3][200]
    allowed = statuses[200] + probes_passed
    expected = max(1, CAROL["rate"]) + CAROL["rate"] * (last - first)  # burst + rate x time
    assert abs(allowed - expected) <= 0.1 * expected, (allowed, expected, statuses)
    served = per_worker(gateway, "gateway_client_requests_total", key_id="carol")
    assert all(served[pid] > before.get(pid, 0) for pid in gateway.worker_pids()), served
