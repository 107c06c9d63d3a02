"""Soak: many concurrent clients for a fixed time through the real gateway to the real model
server, on loopback, bounded in time and in count.

No request fails or gets another answer than its kind deserves; every request is in the request
log exactly once, every priced row in the prediction store (a real PostgreSQL, as in compose and
on Kubernetes) exactly once; the metrics count exactly what was sent; the memory of the
gateway's workers and of the model server stays flat after warm-up.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from pyfunc.schema import FEATURE_NAMES, example_listing
from tests.support.gateway import (
    BOB_KEY,
    LoadClients,
    RunningGateway,
    Sent,
    Shot,
    metric_samples,
    metric_sum,
    running_gateway,
)
from tests.support.postgres import running_postgres
from tests.support.processes import wait_until
from tests.support.stack import ModelServer
from tests.support.traffic import ALICE, listings, settled_lines

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 16
SOAK_SECONDS = 60
WARM_UP_SECONDS = 15
MAX_REQUESTS = 20_000
MIN_REQUESTS = 500  # far below what 2 busy cores do; fewer means the load never happened
MAX_GROWTH_MB = 20
SAMPLE_SECONDS = 1.0


def _body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def shots() -> tuple[list[Shot], dict[str, tuple[int, str | None]]]:
    """The mix of requests the clients send, and what each kind must get back."""
    rows = listings(20)
    bob = {"Authorization": f"Bearer {BOB_KEY}"}
    kinds = {
        "one-row": (Shot("one-row", _body({"dataframe_records": rows[:1]}), 1, ALICE), (200, None)),
        "split-5": (
            Shot(
                "split-5",
                _body(
                    {
                        "dataframe_split": {
                            "columns": list(FEATURE_NAMES),
                            "data": [[r[n] for n in FEATURE_NAMES] for r in rows[:5]],
                        }
                    }
                ),
                5,
                bob,
            ),
            (200, None),
        ),
        "inputs-20": (
            Shot(
                "inputs-20",
                _body({"inputs": {n: [r[n] for r in rows] for n in FEATURE_NAMES}}),
                20,
                ALICE,
            ),
            (200, None),
        ),
        "flagged": (
            Shot(
                "flagged",
                _body(
                    {
                        "dataframe_records": [{**example_listing(), "sector": "marte"}],
                        "params": {"on_unknown_category": "flag"},
                    }
                ),
                1,
                ALICE,
            ),
            (200, None),
        ),
        "number-as-string": (
            Shot(
                "number-as-string",
                _body({"dataframe_records": [{**example_listing(), "net_area": "170"}]}),
                1,
                ALICE,
            ),
            (400, "INVALID_FEATURES"),
        ),
        "unknown-sector": (
            Shot(
                "unknown-sector",
                _body({"dataframe_records": [{**example_listing(), "sector": "marte"}]}),
                1,
                ALICE,
            ),
            (400, "INVALID_FEATURES"),
        ),
        # Connection: close, because the next request on a connection whose body was refused
        # unread can fail (test_hostile_input.py pins that); the soak measures the rest
        "no-key": (
            Shot("no-key", _body({"dataframe_records": rows[:1]}), 1, {"Connection": "close"}),
            (401, "MISSING_API_KEY"),
        ),
    }
    weights = {
        "one-row": 6,
        "split-5": 3,
        "inputs-20": 2,
        "flagged": 1,
        "number-as-string": 1,
        "unknown-sector": 1,
        "no-key": 1,
    }
    mix = [kinds[kind][0] for kind, weight in weights.items() for _ in range(weight)]
    return mix, {kind: expected for kind, (_, expected) in kinds.items()}


# Memory.


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def process_group(pgid: int) -> list[int]:
    """The pids whose process group is `pgid`."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return sorted(pids)


@dataclass
class Memory:
    """RSS samples, in MB, of some processes: (monotonic time, {pid: MB})."""

    names: dict[int, str]
    samples: list[tuple[float, dict[int, float]]] = field(default_factory=list)

    def growth_after(self, warm: float) -> dict[str, tuple[float, float]]:
        """Per process: (MB at `warm`, MB grown since then), each a median of 3 samples."""
        at_warm = [sample for t, sample in self.samples if t >= warm][:3]
        at_end = [sample for _, sample in self.samples][-3:]
        growth = {}
        for pid, name in self.names.items():
            base = statistics.median(sample[pid] for sample in at_warm)
            end = statistics.median(sample[pid] for sample in at_end)
            growth[f"{name} (pid {pid})"] = (round(base, 1), round(end - base, 1))
        return growth


@contextlib.contextmanager
def sampling(names: dict[int, str]) -> Iterator[Memory]:
    """Sample the RSS of `names`' processes every SAMPLE_SECONDS in a thread."""
    memory, stop = Memory(names), threading.Event()

    def run() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            memory.samples.append((time.monotonic(), {pid: rss_mb(pid) for pid in names}))

    thread = threading.Thread(target=run, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield memory
    finally:
        stop.set()
        thread.join(5)


# The soak.


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    """A prediction store on a fresh PostgreSQL."""
    with running_postgres() as admin_url:
        server = admin_url.removeprefix("postgresql+psycopg://").rsplit("/", 1)[0]
        with psycopg.connect(f"postgresql://{server}/postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE predictions")
        yield f"postgresql://{server}/predictions"


@pytest.fixture(scope="module")
def gateway(
    model_server: ModelServer, store_url: str, tmp_path_factory
) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("soak")
    with running_gateway(
        state,
        model_server.url,
        info_path=model_server.info_path,
        workers=2,
        extra_env={"PREDICTION_STORE_URL": store_url},
    ) as running:
        yield running


def stored_rows(store_url: str, request_ids: set[str]) -> Counter:
    """How many rows the prediction store holds for each of `request_ids`."""
    with psycopg.connect(store_url) as db:
        rows = db.execute("SELECT request_id, count(*) FROM predictions GROUP BY request_id")
        return Counter({r: n for r, n in rows if r in request_ids})


def watched(gateway: RunningGateway, model_server: ModelServer) -> dict[int, str]:
    names = {gateway.pid: "gateway master"}
    names.update({pid: "gateway worker" for pid in gateway.worker_pids()})
    assert model_server.process is not None
    names.update({pid: "model server" for pid in process_group(model_server.process.pid)})
    return names


def soak(gateway: RunningGateway, model_server: ModelServer) -> tuple[list[Sent], Memory, float]:
    mix, _ = shots()
    with sampling(watched(gateway, model_server)) as memory:
        started = time.monotonic()
        load = LoadClients(
            gateway.url, mix, CLIENTS, prefix="soak", max_requests=MAX_REQUESTS
        ).start()
        time.sleep(SOAK_SECONDS)
        sent = load.stop()
        time.sleep(2 * SAMPLE_SECONDS)
    return sent, memory, started


def test_soak_no_failure_every_request_logged_once_counted_exactly_memory_flat(
    gateway: RunningGateway, model_server: ModelServer, store_url: str
) -> None:
    _, expected = shots()
    workers = gateway.worker_pids()
    before = metric_samples(gateway)
    logged_before = {line["request_id"] for line in settled_lines(gateway)}

    sent, memory, started = soak(gateway, model_server)

    lines = [line for line in settled_lines(gateway) if line["request_id"] not in logged_before]
    after = metric_samples(gateway)

    # every request got what its kind deserves, none failed
    wrong = [s for s in sent if (s.status, s.error_code) != expected[s.kind]]
    assert wrong == [], wrong[:10]
    assert MIN_REQUESTS <= len(sent) <= MAX_REQUESTS + CLIENTS
    assert len({s.request_id for s in sent}) == len(sent)
    # ... is in the request log exactly once, with its status and rows
    assert Counter(line["request_id"] for line in lines) == Counter(s.request_id for s in sent)
    by_id = {line["request_id"]: line for line in lines}
    assert all(by_id[s.request_id]["status"] == s.status for s in sent)
    assert all(by_id[s.request_id]["rows"] == s.rows for s in sent if s.status == 200)
    # ... and is counted once
    assert delta_by_status(before, after) == Counter(s.status for s in sent)
    priced = sum(s.rows for s in sent if s.status == 200)
    # ... and each priced row is in the prediction store, once
    wanted = Counter({s.request_id: s.rows for s in sent if s.status == 200})
    wait_until(lambda: stored_rows(store_url, set(wanted)) == wanted, 30, "prediction store")
    kinds = Counter(s.kind for s in sent)
    assert deltas(before, after) == {
        "gateway_rows_predicted_total": priced,
        "gateway_predicted_price_uf_count": priced,
        "gateway_request_duration_seconds_count": len(sent),
        "gateway_upstream_duration_seconds_count": len(sent)
        - kinds["number-as-string"]
        - kinds["no-key"],
        "gateway_request_log_errors_total": 0,
        "gateway_prediction_store_errors_total": 0,
    }
    assert (
        field_delta(before, after, "gateway_validation_errors_total", field="net_area")
        == kinds["number-as-string"]
    )
    assert (
        field_delta(before, after, "gateway_validation_errors_total", field="sector")
        == kinds["unknown-sector"]
    )
    assert (
        field_delta(before, after, "gateway_auth_failures_total", reason="missing")
        == kinds["no-key"]
    )
    # no worker restarted, and memory is flat after warm-up
    assert gateway.worker_pids() == workers
    growth = memory.growth_after(started + WARM_UP_SECONDS)
    assert all(grown < MAX_GROWTH_MB for _, grown in growth.values()), (
        f"RSS (MB at warm-up, MB grown since) over {len(sent)} requests: {growth}"
    )


INVOCATIONS = "/invocations"


def delta_by_status(before: dict, after: dict) -> Counter:
    """gateway_requests_total{endpoint="/invocations"} gained, by status."""
    gained: Counter = Counter()
    for (name, labels), value in after.items():
        status = dict(labels)
        if name == "gateway_requests_total" and status["endpoint"] == INVOCATIONS:
            gained[int(status["status"])] += value - before.get((name, labels), 0)
    return +gained


def field_delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


def deltas(before: dict, after: dict) -> dict[str, float]:
    names = (
        "gateway_rows_predicted_total",
        "gateway_predicted_price_uf_count",
        "gateway_request_duration_seconds_count",
        "gateway_upstream_duration_seconds_count",
        "gateway_request_log_errors_total",
        "gateway_prediction_store_errors_total",
    )
    labels = {"gateway_request_duration_seconds_count": {"endpoint": INVOCATIONS}}
    return {name: field_delta(before, after, name, **labels.get(name, {})) for name in names}
