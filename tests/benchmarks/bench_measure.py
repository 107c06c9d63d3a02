"""The measurements: the same batches sent one at a time down each path, interleaved round by
round so that the machine's noise falls on every path alike; and many concurrent keep-alive
clients for a fixed time, with the CPU each process group spent per request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from tests.benchmarks.bench_client import Batch, Connection, prepare_post, prices

logger = logging.getLogger(__name__)

IN_PROCESS, MODEL_SERVER, GATEWAY = "in-process", "model server", "gateway"
BASELINE = "one-hop baseline"
FLOOR = "floor"  # floor_app in front of the same model server as the gateway
FAST_PATH, PIPELINE = "fast path (pyfunc predict)", "fitted pipeline predict"


class InProcess:
    """`model.predict(frame)` on the loaded pyfunc model, as the scoring server calls it."""

    name = IN_PROCESS

    def __init__(self, model):
        self.model = model

    def prepare(self, batch: Batch) -> object:
        return batch.frame

    def send(self, prepared: object) -> np.ndarray:
        return self.model.predict(prepared)["price"].to_numpy()

    def close(self) -> None:
        """Nothing to release."""


class Http:
    """POST /invocations on one keep-alive connection; any status but 200 is an error."""

    def __init__(self, name: str, host: str, port: int, headers: Mapping[str, str] | None = None):
        self.name, self.host, self.port = name, host, port
        self.headers = dict(headers or {})
        self.connection = Connection(host, port)

    def prepare(self, batch: Batch) -> object:
        return prepare_post(self.host, self.port, "/invocations", batch.body, self.headers)

    def send(self, prepared: object) -> bytes:
        status, body = self.connection.send(prepared)
        if status != 200:
            raise RuntimeError(f"{self.name} answered {status}: {body[:300]!r}")
        return body

    def copy(self) -> Http:
        return Http(self.name, self.host, self.port, self.headers)

    def close(self) -> None:
        self.connection.close()


Route = InProcess | Http


CpuReader = Callable[[], dict[str, float]]
K = TypeVar("K")


def summarize(
    seconds: Sequence[float], rows: int, cpu: Mapping[str, float] | None = None
) -> dict[str, object]:
    """Latency percentiles (ms), rows/s from the median and from the total time, and the CPU
    each process group spent per request (ms)."""
    values = np.asarray(seconds)
    return {
        "n": len(values),
        "p50_ms": float(np.percentile(values, 50) * 1e3),
        "p99_ms": float(np.percentile(values, 99) * 1e3),
        "mean_ms": float(values.mean() * 1e3),
        "rows_per_s": float(rows / np.median(values)),
        "rows_per_s_total": float(rows * len(values) / values.sum()),
        "cpu_ms_per_request": {k: v * 1e3 / len(values) for k, v in (cpu or {}).items()},
    }


def sequential(
    routes: Sequence[Route],
    batches: Mapping[int, Sequence[Batch]],
    counts: Mapping[int, int],
    rounds: int,
    cpu: CpuReader = dict,
) -> dict[str, dict[int, dict]]:
    """Per path and batch size: `counts[size]` requests, one at a time, spread over `rounds`
    rounds; each round visits the paths in a rotated order. `cpu()` gives the CPU seconds of
    the started process groups; this process's own CPU is counted as "benchmark process"."""
    prepared = {
        r.name: {size: [r.prepare(b) for b in batches[size]] for size in batches} for r in routes
    }
    samples: dict[str, dict[int, list[float]]] = {r.name: {s: [] for s in batches} for r in routes}
    spent: dict[str, dict[int, dict[str, float]]] = {
        r.name: {s: {} for s in batches} for r in routes
    }
    for route in routes:  # warm-up: first requests open connections and fill caches
        for size in batches:
            for request in prepared[route.name][size][:3]:
                route.send(request)
    for round_ in range(rounds):
        order = [routes[(round_ + k) % len(routes)] for k in range(len(routes))]
        for size, count in counts.items():
            per_round = max(1, -(-count // rounds))
            for route in order:
                pool, times = prepared[route.name][size], samples[route.name][size]
                before = _cpu_now(cpu)
                for i in range(per_round):
                    request = pool[(round_ * per_round + i) % len(pool)]
                    started = time.perf_counter()
                    route.send(request)
                    times.append(time.perf_counter() - started)
                _add(spent[route.name][size], before, _cpu_now(cpu))
        logger.info("round %d/%d done", round_ + 1, rounds)
    return {
        name: {size: summarize(times, size, spent[name][size]) for size, times in by_size.items()}
        for name, by_size in samples.items()
    }


def _cpu_now(cpu: CpuReader) -> dict[str, float]:
    return {**cpu(), "benchmark process": time.process_time()}


def _add(total: dict[str, float], before: Mapping[str, float], after: Mapping[str, float]) -> None:
    for name, seconds in after.items():
        total[name] = total.get(name, 0.0) + seconds - before[name]


def agreement(routes: Sequence[Route], batch: Batch) -> dict[str, float]:
    """Largest relative difference of each path's prices from the in-process ones."""
    answers = {}
    for route in routes:
        answer = route.send(route.prepare(batch))
        answers[route.name] = answer if isinstance(answer, np.ndarray) else prices(answer)
    reference = answers[IN_PROCESS]
    return {
        name: float(np.max(np.abs(got - reference) / np.abs(reference)))
        for name, got in answers.items()
        if name != IN_PROCESS
    }


def fast_path_vs_pipeline(
    model, batches: Sequence[Batch], count: int, rounds: int = 10
) -> dict[str, object]:
    """Single-row latency of the loaded model's `predict` (validation and fast path) and of its
    fitted scikit-learn pipeline alone, on the same rows, path after path in `rounds` rounds
    (not call after call: the pipeline's OpenMP threads keep spinning after each call), and the
    largest relative difference between their prices."""
    pipeline = model.unwrap_python_model()._pipeline
    paths = {
        FAST_PATH: lambda frame: model.predict(frame)["price"].to_numpy(),
        PIPELINE: lambda frame: np.asarray(pipeline.predict(frame), dtype=np.float64),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    prices: dict[str, list[np.ndarray]] = {name: [] for name in paths}
    frames = [batches[i % len(batches)].frame for i in range(count)]
    for predict in paths.values():
        predict(frames[0])  # warm-up
    for chunk in np.array_split(np.arange(count), rounds):
        for name, predict in paths.items():
            for i in chunk:
                started = time.perf_counter()
                prices[name].append(predict(frames[i]))
                times[name].append(time.perf_counter() - started)
    fast, slow = (np.concatenate(prices[name]) for name in (FAST_PATH, PIPELINE))
    return {name: summarize(seconds, 1) for name, seconds in times.items()} | {
        "max_relative_difference": float(np.max(np.abs(fast / slow - 1)))
    }


@dataclass
class _Client:
    """One concurrent client: its connection, its requests and what happened to them."""

    route: Http
    requests: Sequence[object]
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (finished, seconds)
    errors: int = 0
    first_error: str = ""

    def run(self, start: threading.Barrier, stop_at: Callable[[], float], offset: int) -> None:
        """Send back to back (one request in flight) from `start` until `stop_at()`."""
        start.wait()
        i = offset
        while time.perf_counter() < stop_at():
            request = self.requests[i % len(self.requests)]
            i += 1
            sent = time.perf_counter()
            try:
                self.route.send(request)
            except (OSError, RuntimeError) as error:
                self.errors += 1
                self.first_error = self.first_error or repr(error)[:300]
                self.route.close()
                continue
            finished = time.perf_counter()
            self.latencies.append((finished, finished - sent))
        self.route.close()


def concurrent(
    route: Http,
    batches: Sequence[Batch],
    clients: int,
    warmup: float,
    duration: float,
    cpu: CpuReader,
) -> dict[str, object]:
    """`clients` threads, each on its own connection, sending as fast as answers come back.

    Requests that finish inside the measured window (after `warmup`) are counted; `cpu()`
    (CPU seconds of each started process group) is read at both ends of the window.
    """
    return _load_result([_window(route, batches, clients, warmup, duration, cpu)])


def alternating(
    routes: Mapping[K, tuple[Http, CpuReader]],
    batches: Sequence[Batch],
    clients: int,
    warmup: float,
    duration: float,
    rounds: int,
) -> dict[K, dict[str, object]]:
    """`concurrent` on each route in turn, `rounds` times, for `duration / rounds` each: the
    routes share the machine's slow and fast moments, so their ratio does not depend on which
    one was measured when. The windows of each route are pooled (requests, CPU, latencies)."""
    windows: dict[K, list[_Window]] = {name: [] for name in routes}
    for _ in range(rounds):
        for name, (route, cpu) in routes.items():
            windows[name].append(_window(route, batches, clients, warmup, duration / rounds, cpu))
    return {name: _load_result(pooled) for name, pooled in windows.items()}


@dataclass(frozen=True)
class _Window:
    """What the clients of one measured window got, and the CPU spent meanwhile."""

    clients: Sequence[_Client]
    seconds: float
    latencies: Sequence[float]  # of the requests that finished inside the window
    spent: Mapping[str, float]


def _window(
    route: Http,
    batches: Sequence[Batch],
    clients: int,
    warmup: float,
    duration: float,
    cpu: CpuReader,
) -> _Window:
    workers = [_Client(route.copy(), [route.prepare(b) for b in batches]) for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    clock = {"stop_at": float("inf")}  # set just before the clients are released
    threads = [
        threading.Thread(target=w.run, args=(start, lambda: clock["stop_at"], k * 7), daemon=True)
        for k, w in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    clock["stop_at"] = began + warmup + duration + 0.5  # past the window: no tail-off inside
    start.wait()
    time.sleep(warmup)
    cpu_before, client_before = cpu(), time.process_time()
    time.sleep(duration)
    cpu_after, client_after = cpu(), time.process_time()
    for thread in threads:
        thread.join(timeout=duration + 120)
    spent = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
    spent["client"] = client_after - client_before
    window = (began + warmup, began + warmup + duration)
    inside = [
        seconds
        for w in workers
        for finished, seconds in w.latencies
        if window[0] <= finished < window[1]
    ]
    return _Window(workers, duration, inside, spent)


def _load_result(windows: Sequence[_Window]) -> dict[str, object]:
    workers = [w for window in windows for w in window.clients]
    inside = [seconds for window in windows for seconds in window.latencies]
    duration = sum(window.seconds for window in windows)
    spent = {name: sum(window.spent[name] for window in windows) for name in windows[0].spent}
    count = len(inside)
    result: dict[str, object] = {
        "clients": len(windows[0].clients),
        "seconds": duration,
        "requests": count,
        "requests_per_s": count / duration,
        "errors": sum(w.errors for w in workers),
        "first_error": next((w.first_error for w in workers if w.first_error), ""),
        "cpu_ms_per_request": {k: (v * 1e3 / count if count else None) for k, v in spent.items()},
        "cpu_cores_busy": {k: v / duration for k, v in spent.items()},
        "windows_requests_per_s": [len(w.latencies) / w.seconds for w in windows],
    }
    if inside:
        result |= {
            "p50_ms": float(np.percentile(inside, 50) * 1e3),
            "p99_ms": float(np.percentile(inside, 99) * 1e3),
        }
    return result
