"""The served-model file: GET /model, X-Model-Version, re-read on change at most once a second."""

from __future__ import annotations

import os

from gateway import modelinfo
from gateway.app import gateway_of
from gateway.modelinfo import ModelInfo
from tests.support.gateway import ALICE_KEY, write_model_info

AUTH = {"X-API-Key": ALICE_KEY}


def test_model_endpoint_returns_the_file(tmp_path, app):
    info = write_model_info(tmp_path / "served-model.json", version="3", secret_field="no")
    gateway_of(app).model_info.refresh(force=True)
    response = app.test_client().get("/model", headers=AUTH)
    assert response.status_code == 200
    assert response.json == {k: info[k] for k in modelinfo.PUBLIC_FIELDS}
    assert response.headers["X-Model-Version"] == "3"


def test_missing_file_is_503_and_version_unknown(app):
    response = app.test_client().get("/model", headers=AUTH)
    assert response.status_code == 503
    assert response.json["error_code"] == "MODEL_INFO_UNAVAILABLE"
    assert response.headers["X-Model-Version"] == "unknown"


def test_unreadable_file_counts_as_missing(tmp_path):
    path = tmp_path / "served-model.json"
    path.write_text("{not json")
    info = ModelInfo(path)
    assert info.version == "unknown"
    assert info.current() is None


def test_file_is_reread_when_it_changes_but_stat_at_most_once_a_second(tmp_path, monkeypatch):
    path = tmp_path / "served-model.json"
    write_model_info(path, version="3")
    clock = [100.0]
    monkeypatch.setattr(modelinfo.time, "monotonic", lambda: clock[0])
    changes: list[tuple[str, str]] = []
    info = ModelInfo(path, on_change=lambda old, new: changes.append((old, new)))
    assert info.version == "3"
    write_model_info(path, version="4")
    os.utime(path, ns=(1, 10**18))
    clock[0] += 0.5
    assert info.version == "3"  # checked less than a second ago
    clock[0] += 0.6
    assert info.version == "4"
    path.unlink()
    clock[0] += 1.1
    assert info.version == "unknown"
    assert changes == [("", "3"), ("3", "4"), ("4", "unknown")]


def test_the_pool_and_its_version_are_handed_over_together(tmp_path):
    path = tmp_path / "served-model.json"
    pools: list[tuple[list[str] | None, str]] = []
    info = ModelInfo(path, on_pool=lambda servers, version: pools.append((servers, version)))
    info.refresh(force=True)
    assert pools == []  # no file: the gateway keeps what it has
    write_model_info(path, version="3", servers=["http://127.0.0.1:5101", "http://127.0.0.1:5102"])
    info.refresh(force=True)
    write_model_info(path, version="4")  # no pool: GATEWAY_UPSTREAM_URL
    info.refresh(force=True)
    write_model_info(path, version="5", servers="http://127.0.0.1:5101")  # not a list
    info.refresh(force=True)
    path.unlink()
    info.refresh(force=True)
    assert pools == [
        (["http://127.0.0.1:5101", "http://127.0.0.1:5102"], "3"),
        (None, "4"),
        (None, "5"),
    ]


def test_a_new_pool_reaches_requests_of_the_app(tmp_path, app):
    write_model_info(tmp_path / "served-model.json", version="8", servers=["http://127.0.0.1:5201"])
    gateway_of(app).model_info.refresh(force=True)
    pool = gateway_of(app).pool
    assert (pool.urls, pool.version) == (["http://127.0.0.1:5201"], "8")


def test_a_file_with_switch_at_is_taken_at_that_instant_by_every_reader(tmp_path, monkeypatch):
    path = tmp_path / "served-model.json"
    write_model_info(path, version="3", servers=["http://127.0.0.1:5101"])
    now = [1000.0]
    monkeypatch.setattr(modelinfo.time, "time", lambda: now[0])
    pools: list[tuple[list[str] | None, str]] = []
    readers = [
        ModelInfo(path, on_pool=lambda servers, version: pools.append((servers, version)))
        for _ in range(2)
    ]
    assert [r.version for r in readers] == ["3", "3"]
    write_model_info(path, version="4", servers=["http://127.0.0.1:5102"], switch_at=1001.5)
    readers[0].refresh(force=True)
    now[0] = 1001.0
    readers[1].refresh(force=True)
    assert [r.version for r in readers] == ["3", "3"]  # both read it, neither switched
    now[0] = 1001.5
    assert [r.version for r in readers] == ["4", "4"]
    assert pools[-2:] == [(["http://127.0.0.1:5102"], "4")] * 2


def test_a_reader_serving_nothing_yet_takes_a_file_before_its_switch_at(tmp_path, monkeypatch):
    path = tmp_path / "served-model.json"
    monkeypatch.setattr(modelinfo.time, "time", lambda: 1000.0)
    write_model_info(path, version="4", switch_at=1001.5)
    assert ModelInfo(path).version == "4"
