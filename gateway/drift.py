"""Feature drift of the live traffic: the gauge `gateway_feature_drift{feature}`, per worker.

Each worker keeps the last WINDOW_ROWS values of every feature it priced, fed on the request
log's thread (never the request path), and at most once per RESCORE_INTERVAL_SECONDS scores
them against the served model's training reference (`pyfunc.drift.feature_drift`: PSI, about
1 ms for 2,000 rows; no value below `pyfunc.drift.MIN_ROWS` rows). Rows that come sooner are
scored by a one-shot timer, so the gauge catches up when the traffic stops. A new served model
or reference empties the window; a served-model file without one means no gauge, no error.

Across gunicorn workers the gauge is "livemax": a keep-alive client stays on one worker, so
drifted rows move one window, which a maximum shows where a mean would dilute it (an undrifted
window scores about 0.005, so little noise is added); "live" forgets dead workers. Multiprocess
mode cannot remove a labelled series, so after a model change a worker reports NOT_MEASURED
(-1, never a PSI) until it has MIN_ROWS new rows; dashboards keep `gateway_feature_drift >= 0`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import Gauge

from pyfunc.drift import feature_drift
from pyfunc.schema import CATEGORICAL_NAMES, NUMERIC_NAMES, normalize_category

logger = logging.getLogger(__name__)

WINDOW_ROWS = 2_000
RESCORE_INTERVAL_SECONDS = 1.0
NOT_MEASURED = -1.0
_NUMBERS = (int, float)

Reference = dict[str, dict[str, Any]]


class DriftMonitor:
    """The drift window of one worker, and the gauge it sets (`gateway_feature_drift`)."""

    def __init__(
        self,
        gauge: Gauge,
        interval: float = RESCORE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._gauge = gauge
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._reference: Reference = {}
        self._window: dict[str, deque] = {}
        self._reported: set[str] = set()  # features this worker has set the gauge of
        self._unscored = False
        self._scored_at = float("-inf")
        self._timer: threading.Timer | None = None
        self._closed = False

    @property
    def active(self) -> bool:
        """Whether there is a reference to score against."""
        return bool(self._reference)

    def rows(self) -> int:
        """How many rows the window holds."""
        with self._lock:
            return max(map(len, self._window.values()), default=0)

    def use_reference(self, reference: object) -> None:
        """Score against `reference` from now on (None: stop), from an empty window."""
        usable = usable_reference(reference)
        with self._lock:
            self._reference = usable
            self._window = {name: deque(maxlen=WINDOW_ROWS) for name in usable}
            self._unscored = False
            for name in self._reported:
                self._gauge.labels(name).set(NOT_MEASURED)
        if not usable:
            logger.info("the served model has no training reference: drift is not measured")

    def observe(self, columns: Mapping[str, Sequence[Any]]) -> None:
        """Add the features of a priced batch (feature -> values); score if it is time."""
        with self._lock:
            if not self._reference or self._closed:
                return
            for name, window in self._window.items():
                values = columns.get(name, ())[-WINDOW_ROWS:]
                window.extend(map(_canonical, values) if name in CATEGORICAL_NAMES else values)
            self._unscored = True
            self._score_or_wait()

    def score(self) -> dict[str, float]:
        """Score the window now and set the gauge; returns the scores."""
        with self._lock:
            return self._score()

    def close(self) -> None:
        """Stop the pending timer, if any; later rows are ignored."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _score_or_wait(self) -> None:
        wait = self._scored_at + self._interval - self._clock()
        if wait <= 0:
            self._score()
        elif self._timer is None:
            self._timer = threading.Timer(wait, self._on_timer)
            self._timer.daemon = True
            self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._unscored and not self._closed:
                self._score()

    def _score(self) -> dict[str, float]:
        self._unscored = False
        self._scored_at = self._clock()
        scores = feature_drift(self._reference, self._window)
        for name, value in scores.items():
            self._gauge.labels(name).set(value)
        self._reported.update(scores)
        return scores


_canonical = functools.lru_cache(maxsize=1024)(normalize_category)  # few distinct categories


def usable_reference(reference: object) -> Reference:
    """The well-formed features of a served-model file's "reference"; the others are left
    out with a warning, so a damaged file costs their gauge, never a request-log line."""
    if reference is None:
        return {}
    if not isinstance(reference, dict):
        logger.warning("the served model's reference is not an object: drift is not measured")
        return {}
    usable = {name: spec for name, spec in reference.items() if _well_formed(name, spec)}
    ignored = sorted(map(str, set(reference) - set(usable)))
    if ignored:
        logger.warning(
            "no drift for %s: not a feature, or a malformed reference", ", ".join(ignored)
        )
    return usable


def _well_formed(name: str, spec: object) -> bool:
    if not isinstance(spec, dict):
        return False
    shares, edges = spec.get("shares"), spec.get("edges")
    if name in CATEGORICAL_NAMES:
        return isinstance(shares, dict) and all(isinstance(s, _NUMBERS) for s in shares.values())
    return (
        name in NUMERIC_NAMES
        and isinstance(edges, list)
        and isinstance(shares, list)
        and len(shares) == len(edges) + 1
        and all(isinstance(v, _NUMBERS) for v in (*edges, *shares))
        and edges == sorted(edges)
    )
