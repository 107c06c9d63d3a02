"""Feature drift of the live traffic: the gauge `gateway_feature_drift{feature}`, per worker.

Each worker keeps the features of the last WINDOW_ROWS rows it priced (a bounded deque per
feature), fed by `gateway.proxy.prediction_fields` on the request log's thread, never on the
request path, whether or not payloads are logged. At most once per RESCORE_INTERVAL_SECONDS
it scores the window against the served model's training reference with
`pyfunc.drift.feature_drift` (PSI per feature, pure Python: about 1 ms for 2,000 rows) and
sets the gauge; rows that come sooner are scored by a one-shot timer when the interval ends,
so the gauge catches up even when the traffic stops. Features with fewer than
`pyfunc.drift.MIN_ROWS` rows in the window get no value.

The reference is the "reference" of the served-model file (see `gateway.modelinfo`); when the
served model or its reference changes, the window is emptied. A file without one (written
before drift existed) means no gauge and no error.

Across gunicorn workers the gauge is "livemax". Each worker sees part of the traffic, and a
keep-alive client stays on one worker, so a client that sends drifted rows moves one window:
the maximum shows it where a sum or mean would dilute it and "mostrecent" would flicker
between workers; on 2,000-row windows the sampling noise a maximum adds is small (an
undrifted sample scores about 0.005). "live" forgets a dead worker (gunicorn's `child_exit`)
instead of keeping its last values until the next restart.

prometheus_client cannot remove a labelled series in multiprocess mode, so after the served
model changes a worker reports NOT_MEASURED (-1, never a PSI) for the features it had scored,
until it has MIN_ROWS rows of the new traffic; dashboards keep `gateway_feature_drift >= 0`.
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


@functools.lru_cache(maxsize=1024)
def _canonical(category: str) -> str:
    """`normalize_category`, cached: a column holds few distinct categories."""
    return normalize_category(category)


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
