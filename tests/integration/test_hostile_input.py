"""Hostile input against the real gateway (gunicorn, 2 workers) and the real model server.

A table of nasty bodies, each answered with a 4xx JSON error of the documented shape and a
bounded size, the gateway still healthy after each; then schemathesis fuzzes every operation of
the gateway's OpenAPI document. Nothing a client sends yields a 5xx, kills a worker or reaches
the catch-all error handler.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from config.settings import Settings
from gateway.body import LINGER_SECONDS
from gateway.errors import ERROR_CODES
from gateway.openapi import build_spec
from gateway.worker import KEEPALIVE_SECONDS
from pyfunc.schema import FEATURE_NAMES, example_listing
from tests.support.gateway import RunningGateway, metric_samples, metric_sum, running_gateway
from tests.support.traffic import ALICE, listings, post

pytestmark = pytest.mark.integration

JSON = "application/json"
MAX_ERROR_BYTES = 16 * 1024  # an error answer stays small whatever the request was
MAX_BODY_BYTES = 8 * 1024 * 1024  # the gateway's default GATEWAY_MAX_BODY_BYTES
WORKERS = 2
ROW = example_listing()
MARK = "__RAW_JSON_VALUE__"


@pytest.fixture(scope="module")
def gateway(model_server, tmp_path_factory) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("hostile")
    with running_gateway(
        state, model_server.url, info_path=model_server.info_path, workers=WORKERS
    ) as running:
        yield running


# The table.

Body = Callable[[], bytes | Iterable[bytes]]


@dataclass(frozen=True)
class Nasty:
    """A body, its Content-Type, and the answer it must get."""

    body: Body
    status: int
    codes: tuple[str, ...]
    field: str | None = None
    content_type: str | None = JSON


def dumps(payload: object) -> bytes:
    return json.dumps(payload).encode()


def records(*rows: dict[str, Any], **extra: Any) -> Body:
    return lambda: dumps({"dataframe_records": list(rows), **extra})


def raw_value(field: str, token: str) -> Body:
    """One listing whose `field` is the raw JSON text `token` (NaN, 1e999, ...)."""
    text = json.dumps({"dataframe_records": [{**ROW, field: MARK}]})
    return lambda: text.replace(json.dumps(MARK), token).encode()


def split(names: list[str], rows: list[list[Any]], **extra: Any) -> Body:
    return lambda: dumps({"dataframe_split": {"columns": names, "data": rows, **extra}})


def a_million_rows() -> bytes:
    row = dumps(list(ROW.values()))
    return (
        b'{"dataframe_split": {"columns": '
        + dumps(list(FEATURE_NAMES))
        + b', "data": ['
        + b",".join([row] * 1_000_000)
        + b"]}}"
    )


def in_chunks(make: Callable[[], bytes], size: int = 1 << 20) -> Body:
    """Sent with Transfer-Encoding: chunked, so without a Content-Length to refuse early."""

    def chunks() -> Iterator[bytes]:
        body = make()
        for start in range(0, len(body), size):
            yield body[start : start + size]

    return chunks


def duplicated(field: str, first: str, last: str) -> Body:
    """A listing whose `field` key appears twice: `first`, then `last` (raw JSON values)."""
    text = json.dumps({"dataframe_records": [{**ROW, field: MARK}]})
    return lambda: text.replace(json.dumps(MARK), f'{first}, "{field}": {last}').encode()


ROW_JSON = json.dumps(ROW)
BAD_JSON = ("INVALID_JSON",)
BAD_FEATURES = ("INVALID_FEATURES",)
BAD_BODY = ("INVALID_JSON", "INVALID_FEATURES")
TOO_LARGE = ("PAYLOAD_TOO_LARGE",)
NOT_JSON = ("UNSUPPORTED_MEDIA_TYPE",)
EXTRA = [f"extra_column_{i}" for i in range(10_000)]

NASTY: dict[str, Nasty] = {
    # numbers JSON does not have, or that overflow
    "nan": Nasty(raw_value("net_area", "NaN"), 400, BAD_JSON),
    "infinity": Nasty(raw_value("latitude", "Infinity"), 400, BAD_JSON),
    "minus-infinity-in-split": Nasty(
        lambda: dumps(
            {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": [list(ROW.values())]}}
        ).replace(b"-70.5476", b"-Infinity"),
        400,
        BAD_JSON,
    ),
    "number-overflowing-to-infinity": Nasty(raw_value("net_area", "1e999"), 400, BAD_JSON),
    "integer-beyond-int64": Nasty(
        raw_value("net_area", "1" + "0" * 30), 400, BAD_FEATURES, "net_area"
    ),
    "negative-zero-area": Nasty(
        raw_value("net_usable_area", "-0.0"), 400, BAD_FEATURES, "net_usable_area"
    ),
    "half-a-room": Nasty(records({**ROW, "n_rooms": 2.5}), 400, BAD_FEATURES, "n_rooms"),
    # numbers as strings, nulls, nesting
    "number-as-string": Nasty(records({**ROW, "net_area": "170"}), 400, BAD_FEATURES, "net_area"),
    "numbers-as-strings-in-inputs": Nasty(
        lambda: dumps({"inputs": {name: [str(value)] for name, value in ROW.items()}}),
        400,
        BAD_FEATURES,
        "n_rooms",
    ),
    "null-feature": Nasty(records({**ROW, "latitude": None}), 400, BAD_FEATURES, "latitude"),
    "nested-object-value": Nasty(
        records({**ROW, "net_area": {"value": 170}}), 400, BAD_FEATURES, "net_area"
    ),
    "rows-nested-in-a-list": Nasty(
        lambda: dumps({"dataframe_records": [[ROW]]}), 400, BAD_FEATURES, "dataframe_records"
    ),
    "rows-as-an-object": Nasty(
        lambda: dumps({"dataframe_records": {"0": ROW}}), 400, BAD_FEATURES, "dataframe_records"
    ),
    "deep-nesting": Nasty(lambda: b"[" * 100_000 + b"]" * 100_000, 400, BAD_JSON),
    # unicode and very long sectors
    "emoji-and-rtl-override-sector": Nasty(
        records({**ROW, "sector": "🏠\u202eñuñoa"}), 400, BAD_FEATURES, "sector"
    ),
    "nul-inside-sector": Nasty(
        records({**ROW, "sector": "las\u0000condes"}), 400, BAD_FEATURES, "sector"
    ),
    "lone-surrogate-escape": Nasty(raw_value("sector", '"\\ud800"'), 400, BAD_JSON),
    "megabyte-sector": Nasty(
        records({**ROW, "sector": "x" * 1_000_000}), 400, BAD_FEATURES, "sector"
    ),
    "sector-over-the-body-limit": Nasty(
        records({**ROW, "sector": "x" * MAX_BODY_BYTES}), 413, TOO_LARGE
    ),
    # size
    "a-million-rows": Nasty(a_million_rows, 413, TOO_LARGE),
    "a-million-rows-chunked": Nasty(in_chunks(a_million_rows), 413, TOO_LARGE),
    "twenty-thousand-bad-rows": Nasty(
        records(*[{**ROW, "net_area": -1}] * 20_000), 400, BAD_FEATURES, "net_area"
    ),
    "no-rows": Nasty(records(), 400, BAD_FEATURES, "rows"),
    # not a JSON object, or no JSON at all
    "empty-body": Nasty(lambda: b"", 400, BAD_JSON),
    "white-space-body": Nasty(lambda: b" \r\n\t ", 400, BAD_JSON),
    "truncated-json": Nasty(lambda: dumps({"dataframe_records": [ROW]})[:-7], 400, BAD_JSON),
    "top-level-array": Nasty(lambda: dumps([ROW]), 400, BAD_FEATURES, "body"),
    "top-level-string": Nasty(lambda: b'"dataframe_records"', 400, BAD_FEATURES, "body"),
    "top-level-null": Nasty(lambda: b"null", 400, BAD_FEATURES, "body"),
    "top-level-number": Nasty(lambda: b"42", 400, BAD_FEATURES, "body"),
    # wrong encodings and content types
    "utf-16-body": Nasty(
        lambda: json.dumps({"dataframe_records": [ROW]}).encode("utf-16"), 400, BAD_JSON
    ),
    "utf-16-declared": Nasty(
        lambda: json.dumps({"dataframe_records": [ROW]}).encode("utf-16"),
        415,
        NOT_JSON,
        content_type="application/json; charset=utf-16",
    ),
    "latin-1-body": Nasty(
        lambda: json.dumps(
            {"dataframe_records": [{**ROW, "sector": "ñuñoa"}]}, ensure_ascii=False
        ).encode("latin-1"),
        400,
        BAD_JSON,
    ),
    "utf-8-byte-order-mark": Nasty(
        lambda: b"\xef\xbb\xbf" + dumps({"dataframe_records": [ROW]}), 400, BAD_JSON
    ),
    "csv-body": Nasty(
        lambda: (",".join(FEATURE_NAMES) + "\n" + ",".join(map(str, ROW.values()))).encode(),
        415,
        NOT_JSON,
        content_type="text/csv",
    ),
    "form-body": Nasty(
        lambda: b"dataframe_records=1",
        415,
        NOT_JSON,
        content_type="application/x-www-form-urlencoded",
    ),
    "duplicated-column-in-split": Nasty(
        split([*FEATURE_NAMES, "net_area"], [[*ROW.values(), 1.0]]), 400, BAD_FEATURES
    ),
    # extra columns and keys, few or very many
    "extra-column-in-records": Nasty(records({**ROW, "price": 10_000}), 400, BAD_FEATURES, "price"),
    "extra-column-in-split": Nasty(
        split([*FEATURE_NAMES, "garage"], [[*ROW.values(), 1]]), 400, BAD_FEATURES, "garage"
    ),
    "extra-column-in-inputs": Nasty(
        lambda: dumps(
            {"inputs": {**{name: [value] for name, value in ROW.items()}, "garage": [1]}}
        ),
        400,
        BAD_FEATURES,
        "garage",
    ),
    "ten-thousand-extra-columns-in-split": Nasty(
        split([*FEATURE_NAMES, *EXTRA], [[*ROW.values(), *[1] * len(EXTRA)]]), 400, BAD_FEATURES
    ),
    "ten-thousand-extra-columns-in-inputs": Nasty(
        lambda: dumps(
            {
                "inputs": {
                    **{name: [value] for name, value in ROW.items()},
                    **{name: [1] for name in EXTRA},
                }
            }
        ),
        400,
        BAD_FEATURES,
    ),
    "ten-thousand-unknown-top-level-keys": Nasty(
        lambda: dumps({"dataframe_records": [ROW], **{f"extra_key_{i}": 1 for i in range(10_000)}}),
        400,
        BAD_FEATURES,
    ),
    "megabyte-column-name": Nasty(records({**ROW, "c" * 1_000_000: 1}), 400, BAD_FEATURES),
    # what only the model can refuse, and its parameters
    "split-index-not-a-list": Nasty(
        split(list(FEATURE_NAMES), [list(ROW.values())], index="x"), 400, BAD_FEATURES
    ),
    "split-index-shorter-than-data": Nasty(
        split(list(FEATURE_NAMES), [list(ROW.values())] * 2, index=[0]), 400, BAD_FEATURES
    ),
    "policy-of-the-wrong-type": Nasty(
        records(ROW, params={"on_unknown_category": 5}), 400, BAD_FEATURES
    ),
    "unknown-policy": Nasty(
        records(ROW, params={"on_unknown_category": "bogus"}),
        400,
        BAD_FEATURES,
        "on_unknown_category",
    ),
}


def send(gateway: RunningGateway, case: Nasty) -> requests.Response:
    headers = dict(ALICE)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    return requests.post(
        f"{gateway.url}/invocations", data=case.body(), headers=headers, timeout=60
    )


def assert_still_healthy(gateway: RunningGateway) -> None:
    assert requests.get(f"{gateway.url}/health", timeout=10).status_code == 200
    response = post(gateway.url, {"dataframe_records": listings(1)}, ALICE)
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["predictions"]) == 1


@pytest.mark.parametrize("name", list(NASTY))
def test_nasty_body_gets_a_small_4xx_json_error_and_the_gateway_stays_healthy(
    gateway: RunningGateway, name: str
) -> None:
    case = NASTY[name]

    response = send(gateway, case)

    assert response.status_code == case.status, response.text[:1000]
    assert response.headers["Content-Type"] == JSON
    content = response.json()
    assert content["error_code"] in case.codes, content
    assert ERROR_CODES[content["error_code"]][0] == response.status_code
    assert isinstance(content["message"], str) and content["message"]
    assert content["request_id"] == response.headers["X-Request-ID"]
    if case.field is not None:
        assert case.field in {error["field"] for error in content["errors"]}, content["errors"]
    assert len(response.content) <= MAX_ERROR_BYTES, (
        f"{len(response.content)} bytes of error for a {name} request: {response.text[:300]}..."
    )
    assert_still_healthy(gateway)


def test_a_fractional_number_of_rooms_is_refused_naming_field_and_row(
    gateway: RunningGateway,
) -> None:
    response = post(gateway.url, {"dataframe_records": [ROW, {**ROW, "n_rooms": 2.5}]}, ALICE)

    message = "n_rooms must be a whole number (row 1, got 2.5)"
    assert response.status_code == 400, response.text[:500]
    assert response.json()["message"] == f"Invalid input (n_rooms): {message}"
    assert response.json()["errors"] == [{"field": "n_rooms", "row": 1, "message": message}]


# Duplicated keys: two JSON parsers may keep different values; the model must see the checked one.

DUPLICATED = {
    "feature-key": duplicated("net_area", '"evil"', json.dumps(ROW["net_area"])),
    "format-key": lambda: (
        b'{"dataframe_records": "evil", "dataframe_records": [' + ROW_JSON.encode() + b"]}"
    ),
}


@pytest.mark.parametrize("name", list(DUPLICATED))
def test_a_duplicated_key_is_read_as_its_last_value_by_gateway_and_model_alike(
    gateway: RunningGateway, name: str
) -> None:
    """The first value would be refused, the last one is valid: the listing is priced as if the
    key appeared once, with its last value."""
    plain = post(gateway.url, {"dataframe_records": [ROW]}, ALICE)

    response = send(gateway, Nasty(DUPLICATED[name], 200, ()))

    assert plain.status_code == 200, plain.text[:500]
    assert response.status_code == 200, response.text[:500]
    assert response.json() == plain.json()


# A body refused before it is read must not break the client's connection.

LARGE = dumps({"dataframe_records": [ROW] * 1_000})  # 175 kB: more than one socket read
REFUSED_UNREAD = {
    "401-missing-key": ({}, JSON, LARGE, 401),
    "403-wrong-key": ({"X-API-Key": "wrong"}, JSON, LARGE, 403),
    "415-csv": (ALICE, "text/csv", LARGE, 415),
    "413-too-large": (ALICE, JSON, b"[" + b" " * MAX_BODY_BYTES + b"]", 413),
    "400-after-reading": (ALICE, JSON, LARGE.replace(b"170.0", b'"x"'), 400),
}


@pytest.mark.parametrize("name", list(REFUSED_UNREAD))
def test_the_next_request_on_a_keep_alive_connection_survives_a_refused_body(
    gateway: RunningGateway, name: str
) -> None:
    """The gateway answers 401/403/415/413 without reading the body; the connection is kept
    alive, so the client sends its next request on it. That one must be answered too."""
    headers, content_type, body, status = REFUSED_UNREAD[name]
    valid = dumps({"dataframe_records": [ROW]})
    outcomes: Counter = Counter()
    with requests.Session() as session:
        for _ in range(40):
            refused = session.post(
                f"{gateway.url}/invocations",
                data=body,
                timeout=30,
                headers={**headers, "Content-Type": content_type},
            )
            assert refused.status_code == status
            try:
                outcomes[
                    session.post(
                        f"{gateway.url}/invocations",
                        data=valid,
                        timeout=30,
                        headers={**ALICE, "Content-Type": JSON},
                    ).status_code
                ] += 1
            except requests.ConnectionError as error:
                outcomes[f"ConnectionError: {str(error)[:80]}"] += 1
    assert outcomes == {200: 40}


def test_a_silent_client_and_one_that_never_ends_its_headers_are_let_go_after_the_keepalive(
    gateway: RunningGateway,
) -> None:
    """Neither holds one of a worker's GATEWAY_CONNECTIONS for longer than gunicorn's
    keep-alive: the silent connection is closed, the unfinished request refused with a 400."""
    address = urlsplit(gateway.url)
    with (
        socket.create_connection((address.hostname, address.port), timeout=20) as silent,
        socket.create_connection((address.hostname, address.port), timeout=20) as unfinished,
    ):
        started = time.monotonic()
        unfinished.sendall(b"POST /invocations HTTP/1.1\r\nHost: gateway\r\nX-API-Key: ")
        assert silent.recv(1024) == b""
        silent_seconds = time.monotonic() - started
        answer = unfinished.recv(1024)
        unfinished_seconds = time.monotonic() - started
    assert KEEPALIVE_SECONDS - 0.5 < silent_seconds < 2 * KEEPALIVE_SECONDS
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert KEEPALIVE_SECONDS - 0.5 < unfinished_seconds < 2 * KEEPALIVE_SECONDS


def test_an_answer_after_which_the_connection_closes_says_so(gateway: RunningGateway) -> None:
    """The client asked for it: its HTTP client must not send the next request on it."""
    valid = dumps({"dataframe_records": [ROW]})
    headers = {**ALICE, "Content-Type": JSON, "Connection": "close"}
    answer = requests.post(f"{gateway.url}/invocations", data=valid, headers=headers, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["Connection"] == "close"


def test_a_huge_body_refused_unread_is_answered_and_the_rest_left_unread(
    gateway: RunningGateway,
) -> None:
    """Content-Length says 1 GB, a kilobyte comes, then nothing: the 401 comes once the
    gateway gives up waiting for the rest, saying the connection closes, and it does."""
    address = urlsplit(gateway.url)
    head = (
        "POST /invocations HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Content-Length: {1 << 30}\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=20) as client:
        started = time.monotonic()
        client.sendall(head.encode() + b"[" * 1024)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
        closed_after = time.monotonic() - started
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b"\r\nconnection: close\r\n" in rest.lower()
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error_code"] == "MISSING_API_KEY"
    assert closed_after < LINGER_SECONDS + 5


# schemathesis: every operation of the OpenAPI document, positive and negative cases.


def fuzzed_document() -> dict[str, Any]:
    """The gateway's OpenAPI document. X-Request-ID keeps its pattern out: the gateway replaces
    an id that does not match it (documented) rather than refusing the request."""
    spec = build_spec(Settings.from_env({}))
    for parameter in spec["paths"]["/invocations"]["post"]["parameters"]:
        if parameter["name"] == "X-Request-ID":
            parameter["schema"].pop("pattern")
    return spec


SCHEMA = schemathesis.openapi.from_dict(fuzzed_document())


@pytest.fixture(scope="module")
def fuzzing_session(gateway: RunningGateway) -> Iterator[requests.Session]:
    """One keep-alive session for every fuzzed request, closed before the gateway stops."""
    with requests.Session() as session:
        yield session


def test_the_fuzzed_document_is_the_served_one(gateway: RunningGateway) -> None:
    served = requests.get(f"{gateway.url}/openapi.json", timeout=10).json()
    header = served["paths"]["/invocations"]["post"]["parameters"][0]
    assert header["schema"].pop("pattern") == "^[A-Za-z0-9._:-]{1,128}$"
    assert served == SCHEMA.raw_schema


@SCHEMA.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error_and_no_breach_of_the_document(
    case: schemathesis.Case, gateway: RunningGateway, fuzzing_session: requests.Session
) -> None:
    # Schema-valid requests may still be refused: the document cannot list the sectors the
    # model knows, nor say that a casa of 10 m2 on a 200,000 m2 lot is nonsense.
    case.call_and_validate(
        base_url=gateway.url,
        session=fuzzing_session,
        headers=ALICE,
        timeout=30,
        excluded_checks=[positive_data_acceptance],
    )


def test_no_worker_died_and_no_request_reached_the_catch_all(gateway: RunningGateway) -> None:
    """After the table and the fuzzing above (this module runs in file order)."""
    log = (gateway.state_dir / "gunicorn.log").read_text()
    assert log.count("Booting worker") == WORKERS, log[-3000:]
    assert len(gateway.worker_pids()) == WORKERS
    assert "unexpected error while handling the request" not in log
    assert "Traceback" not in log
    samples = metric_samples(gateway)
    answered = metric_sum(samples, "gateway_requests_total")
    server_errors = sum(
        value
        for (name, labels), value in samples.items()
        if name == "gateway_requests_total" and dict(labels)["status"] >= "500"
    )
    assert answered > len(NASTY) * 2
    assert server_errors == 0
