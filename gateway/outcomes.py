"""POST /outcomes: realized prices of valued listings; and the live-accuracy gauges.

A client sends, per listing, which valuation it concerns (`request_id`, the `X-Request-ID` of
the answer, and `row`, the listing's row in that request; or `listing_id`, an id it sent in
the valuation's `listing_ids`: the latest valuation of that listing), the realized `price` in
UF and its `date`. Each outcome is answered by its own status:

  created    stored
  duplicate  the same price and date were already stored for that valuation: nothing changes
  corrected  another price or date was stored: replaced (a late correction), revision counted
  unknown    no such valuation in the store (a wrong id, or a valuation under a second old,
             not written yet): nothing stored, send it again later

A malformed body is refused whole (400 INVALID_OUTCOMES, each problem naming its field and
outcome), like invalid features. The gauges (`LIVE_GAUGES`) are the monitor's latest figures,
read from the store's live_accuracy table at most every CACHE_SECONDS and exposed on /metrics
by every gateway: a batch job cannot be scraped, and the gateway is scraped already.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, g
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway import body, errors
from gateway.errors import GatewayError, json_response
from gateway.requestlog import iso_utc
from gateway.store import Store, StoreError
from pyfunc.contract import FieldError, summary
from pyfunc.schema import TARGET

logger = logging.getLogger(__name__)

OUTCOMES = "outcomes"
MAX_OUTCOMES = 1_000
ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # what X-Request-ID keeps, as the gateway
LISTING_ID_MAX = 128
FIELDS = ("request_id", "row", "listing_id", "price", "date")
EARLIEST_DATE = dt.date(2000, 1, 1)
CREATED, DUPLICATE, CORRECTED, UNKNOWN = "created", "duplicate", "corrected", "unknown"
CACHE_SECONDS = 15.0
ALL_SECTORS = "all"  # the sector label of a version's figures over every sector

# name in live_accuracy -> help; labels: version and sector when the row has them
LIVE_GAUGES = {
    "model_live_mae_uf": "Mean absolute error of served prices against realized ones, in UF.",
    "model_live_mape_ratio": "Mean absolute percentage error against realized prices (0.1 = 10%).",
    "model_live_coverage_ratio": "Share of realized prices inside the served 80% range.",
    "model_live_bias_uf": "Mean of served minus realized price, in UF (> 0: overvalued).",
    "model_live_outcomes": "Realized prices joined to valuations in the monitor's window.",
    "model_test_mae_uf": "The version's MAE on the test set when it was evaluated, in UF.",
    "model_live_mae_limit_uf": "Live MAE above which LiveMaeAboveTest fires "
    "(MONITOR_MAE_FACTOR times the test MAE).",
    "model_live_min_outcomes": "Realized prices a version needs before its accuracy alerts "
    "(MONITOR_MIN_OUTCOMES).",
    "model_live_coverage_band_ratio": "Allowed distance of the live coverage from 0.8 "
    "(MONITOR_COVERAGE_BAND).",
    "model_live_accuracy_updated_timestamp_seconds": "When the monitor last computed these.",
}


@dataclass(frozen=True)
class Outcome:
    """A checked outcome: the valuation it names (request id and row, or listing id)."""

    request_id: str | None
    row: int | None
    listing_id: str | None
    price: float
    date: str


def validate_outcomes(payload: object, today: dt.date) -> list[Outcome]:
    """The outcomes of a body `{"outcomes": [...]}`; GatewayError(INVALID_OUTCOMES) naming
    every problem's field and outcome otherwise."""
    if not isinstance(payload, dict) or set(payload) != {OUTCOMES}:
        raise _invalid([FieldError("body", None, 'the body must be {"outcomes": [...]}')])
    items = payload[OUTCOMES]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_OUTCOMES:
        got = f"{len(items)} outcomes" if isinstance(items, list) else type(items).__name__
        raise _invalid(
            [
                FieldError(
                    OUTCOMES, None, f"outcomes must be a list of 1 to {MAX_OUTCOMES}, got {got}"
                )
            ]
        )
    problems: list[FieldError] = []
    outcomes = [_check_outcome(item, i, today, problems) for i, item in enumerate(items)]
    if problems:
        raise _invalid(problems[:20])
    return [o for o in outcomes if o is not None]


def _invalid(problems: list[FieldError]) -> GatewayError:
    return GatewayError(errors.INVALID_OUTCOMES, summary(problems), [p.as_dict() for p in problems])


def _check_outcome(
    item: object, i: int, today: dt.date, problems: list[FieldError]
) -> Outcome | None:
    """One outcome, or None with its problems appended."""
    found: list[FieldError] = []

    def problem(field: str, message: str) -> None:
        found.append(FieldError(field, i, f"{message} (outcome {i})"))

    if not isinstance(item, dict):
        problem("outcome", f"an outcome must be an object, got {type(item).__name__}")
        problems += found
        return None
    for name in sorted(set(item) - set(FIELDS), key=str)[:3]:
        problem(str(name)[:40], f"unknown field {str(name)[:40]!r}; allowed: {', '.join(FIELDS)}")
    _check_target(item, problem)
    price, date = item.get("price"), item.get("date")
    _check_price(price, problem)
    _check_date(date, today, problem)
    problems += found
    if found:
        return None
    request_id, row, listing_id = item.get("request_id"), item.get("row"), item.get("listing_id")
    return Outcome(request_id, row, listing_id, float(price), str(date))  # type: ignore[arg-type]


def _check_target(item: dict, problem: Callable) -> None:
    """Either request_id and row, or listing_id (a key sent as null counts as sent)."""
    request_id, row, listing_id = item.get("request_id"), item.get("row"), item.get("listing_id")
    by_request = "request_id" in item or "row" in item
    if "listing_id" in item and by_request:
        problem("listing_id", "send either request_id and row, or listing_id, not both")
    elif "listing_id" in item:
        if not isinstance(listing_id, str) or not 1 <= len(listing_id) <= LISTING_ID_MAX:
            problem("listing_id", f"listing_id must be a string of 1 to {LISTING_ID_MAX} chars")
    elif not by_request:
        problem("request_id", "request_id (with row) or listing_id is required")
    else:
        if not isinstance(request_id, str) or not ID_PATTERN.fullmatch(request_id):
            problem("request_id", "request_id must be the X-Request-ID of the valuation")
        if type(row) is not int or row < 0:
            problem(
                "row",
                f"row must be an integer >= 0, the listing's row in the request, got {_shown(row)}",
            )


def _check_price(price: Any, problem: Callable) -> None:
    low, high = TARGET.minimum, TARGET.maximum
    if type(price) not in (int, float) or not math.isfinite(price):
        problem("price", f"price must be a number, the realized price in UF, got {_shown(price)}")
    elif not low <= price <= high:
        problem("price", f"price must be between {low:g} and {high:g} UF, got {price:g}")


def _check_date(date: Any, today: dt.date, problem: Callable) -> None:
    try:
        day = dt.date.fromisoformat(date) if isinstance(date, str) and len(date) == 10 else None
    except ValueError:
        day = None
    if day is None:
        problem("date", f"date must be a date as YYYY-MM-DD, got {_shown(date)}")
    elif not EARLIEST_DATE <= day <= today + dt.timedelta(days=1):
        problem("date", f"date must be between {EARLIEST_DATE} and today, got {date}")


def _shown(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"


def record_outcomes(
    store: Store, outcomes: list[Outcome], key_id: str | None
) -> list[dict[str, Any]]:
    """Store each outcome against its valuation; one result (status, request_id, row) each."""
    received_at = iso_utc(time.time())

    def work(execute: Callable[..., list[tuple]]) -> list[dict[str, Any]]:
        return [_record(execute, o, received_at, key_id) for o in outcomes]

    return store.run(work)


def _record(
    execute: Callable[..., list[tuple]], outcome: Outcome, received_at: str, key_id: str | None
) -> dict[str, Any]:
    if outcome.listing_id is not None:
        found = execute(
            "SELECT request_id, row_index FROM predictions WHERE listing_id = %s "
            "ORDER BY predicted_at DESC LIMIT 1",
            (outcome.listing_id,),
        )
    else:
        found = execute(
            "SELECT request_id, row_index FROM predictions WHERE request_id = %s "
            "AND row_index = %s",
            (outcome.request_id, outcome.row),
        )
    if not found:
        return _result(UNKNOWN, outcome.request_id, outcome.row, outcome.listing_id)
    request_id, row = found[0]
    ((inserted,),) = execute(
        "INSERT INTO outcomes (request_id, row_index, price, observed_on, received_at, key_id) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (request_id, row_index) DO NOTHING",
        (request_id, row, outcome.price, outcome.date, received_at, key_id),
    )
    if inserted:
        return _result(CREATED, request_id, row, outcome.listing_id)
    ((price, date),) = execute(
        "SELECT price, observed_on FROM outcomes WHERE request_id = %s AND row_index = %s",
        (request_id, row),
    )
    if (price, date) == (outcome.price, outcome.date):
        return _result(DUPLICATE, request_id, row, outcome.listing_id)
    execute(
        "UPDATE outcomes SET price = %s, observed_on = %s, received_at = %s, key_id = %s, "
        "revisions = revisions + 1 WHERE request_id = %s AND row_index = %s",
        (outcome.price, outcome.date, received_at, key_id, request_id, row),
    )
    return _result(CORRECTED, request_id, row, outcome.listing_id)


def _result(status: str, request_id: str | None, row: int | None, listing_id: str | None):
    result = {"status": status, "request_id": request_id, "row": row}
    return result | ({"listing_id": listing_id} if listing_id is not None else {})


def init_app(app: Flask, store: Store) -> None:
    """Serve POST /outcomes (behind an API key, as /invocations)."""
    blueprint = Blueprint(OUTCOMES, __name__)

    @blueprint.post("/outcomes", endpoint="outcomes")
    def post_outcomes() -> Response:
        body.require_json()
        payload = body.parse_json(body.read_body())
        outcomes = validate_outcomes(payload, dt.datetime.now(dt.UTC).date())
        g.record.rows = len(outcomes)
        try:
            results = record_outcomes(store, outcomes, g.record.key_id)
        except StoreError as error:
            logger.error("%s", error)
            raise GatewayError(
                errors.STORE_UNAVAILABLE, "the prediction store is not reachable; send again"
            ) from None
        counts = {s: 0 for s in (CREATED, DUPLICATE, CORRECTED, UNKNOWN)}
        for result in results:
            counts[result["status"]] += 1
        return json_response({**counts, "results": results})

    app.register_blueprint(blueprint)


class LiveAccuracy(Collector):
    """The monitor's figures from the store's live_accuracy table, as gauges (LIVE_GAUGES)."""

    def __init__(self, store: Store):
        self.store = store
        self._rows: list[tuple] = []
        self._read_at = float("-inf")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_name: dict[str, list[tuple]] = {}
        for version, sector, name, value in self._cached_rows():
            by_name.setdefault(name, []).append((version, sector, value))
        for name, rows in by_name.items():
            if name not in LIVE_GAUGES:
                continue
            labels = [k for k, i in (("version", 0), ("sector", 1)) if any(r[i] for r in rows)]
            family = GaugeMetricFamily(name, LIVE_GAUGES[name], labels=labels)
            for version, sector, value in rows:
                family.add_metric(
                    [{"version": version, "sector": sector}[k] for k in labels], value
                )
            yield family

    def _cached_rows(self) -> list[tuple]:
        if time.monotonic() - self._read_at >= CACHE_SECONDS:
            self._read_at = time.monotonic()  # a failing store is asked again later, not per scrape
            try:
                self._rows = self.store.run(
                    lambda execute: execute(
                        "SELECT model_version, sector, name, value FROM live_accuracy"
                    )
                )
            except StoreError as error:
                logger.warning("live accuracy not exposed: %s", error)
        return self._rows
