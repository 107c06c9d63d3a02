"""Translation of the model server's answers into the gateway's errors: no dumps, no traces."""

from __future__ import annotations

import orjson
import pytest

from gateway.upstream import UpstreamAnswer, clean_errors, clean_message, failure

DUMP = ("Failed to predict data '     type      sector  net_usable_area\n0  casa  vitacura"
        "  -5.0'. \nError: ")


def answer(status: int, content: object) -> UpstreamAnswer:
    body = content if isinstance(content, bytes) else orjson.dumps(content)
    return UpstreamAnswer(status, body, "application/json", 0.01)


def test_mlflow_dump_prefix_is_stripped():
    assert clean_message(DUMP + "net_usable_area must be between 10 to 5000 m2 (row 0, "
                                "got -5)") == "net_usable_area must be between 10 to 5000 m2 " \
                                              "(row 0, got -5)"


def test_dump_without_error_part_is_never_shown():
    assert clean_message("Failed to predict data '   type\n0 casa") == "invalid input"


def test_long_messages_are_cut():
    assert len(clean_message("x" * 10_000)) == 4003


def test_schema_enforcement_error_keeps_only_its_message():
    error = failure(answer(400, {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": DUMP + "Failed to enforce schema of data: column net_area is not a double",
        "stack_trace": "Traceback (most recent call last):\n  File ...",
    }))
    assert (error.status, error.code) == (400, "INVALID_FEATURES")
    assert error.message == "Failed to enforce schema of data: column net_area is not a double"
    assert error.errors is None


def test_errors_list_keeps_field_row_and_message_only():
    raw = [{"field": "net_area", "row": 3, "message": DUMP + "net_area too small", "x": 1},
           {"field": "sector", "row": None, "message": "unknown"}, "junk", {"row": 1}]
    assert clean_errors(raw) == [
        {"field": "net_area", "row": 3, "message": "net_area too small"},
        {"field": "sector", "row": None, "message": "unknown"}]


@pytest.mark.parametrize(("status", "content", "expected"), [
    (504, b"Request processing time exceeded limit", (504, "UPSTREAM_TIMEOUT")),
    (503, b"", (503, "UPSTREAM_UNAVAILABLE")),
    (500, b"Internal Server Error", (502, "UPSTREAM_ERROR")),
    (415, b"This predictor only supports the following content types", (502, "UPSTREAM_ERROR")),
    (400, {"error_code": "BAD_REQUEST", "stack_trace": "Traceback ...",
           "message": "Encountered an unexpected error while evaluating the model. Verify"},
     (502, "UPSTREAM_ERROR")),
    (400, b"not json", (502, "UPSTREAM_ERROR")),
])
def test_other_upstream_answers(status, content, expected):
    error = failure(answer(status, content))
    assert (error.status, error.code) == expected
    assert "Traceback" not in error.message
    assert "Failed to predict" not in error.message
