"""README's commands, run as written in a copy of the project, in README order.

Each command of a ```bash block either has a check here (which runs it and asserts what it
should have done) or is listed in README under "Commands checked otherwise"; a command that is
neither fails the test, so README and the tests cannot drift apart. Placeholders (a folder,
a PostgreSQL URL, the gateway's port) are substituted by the `SUBSTITUTIONS` below. The
commands build on each other (the versions that `evaluate`/`promote` name, the running
gateway), so they run in README order against one copy.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from config.settings import PROJECT_DIR
from pyfunc.schema import FEATURE_NAMES
from steps.generate import generate_listings, generate_splits
from tests.support.postgres import running_postgres
from tests.support.processes import http_ok, stop_process_group, wait_until
from tests.support.project import ProjectCopy, make_project_copy
from tests.support.readme import bash_commands, checked_otherwise

pytestmark = pytest.mark.integration

README = (PROJECT_DIR / "README.md").read_text()
COMMANDS = bash_commands(README)
EXCEPTIONS = checked_otherwise(README)
MODEL = "property-friends"
FOLDER_ROWS = {"train": 1500, "test": 500}
PLACEHOLDERS = (
    "/path/to/folder",
    "PGPASSWORD=...",
    "postgresql://user@host:5432/db",
    "http://127.0.0.1:8000",
)


@dataclass
class Readme:
    """The project copy the commands run in, and what they share."""

    copy: ProjectCopy
    folder: Path
    postgres_url: str
    client: MlflowClient
    substitutions: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.copy.root

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        for placeholder, value in self.substitutions.items():
            command = command.replace(placeholder, value)
        result = self.copy.run(command, timeout)
        assert result.returncode == 0, (
            f"{command}\nexit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
        return result

    def versions(self) -> int:
        return len(self.client.search_model_versions(f"name = '{MODEL}'"))

    def aliases(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.client.get_registered_model(MODEL).aliases.items()}

    def latest_run(self, step: str):
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        (run, *_) = self.client.search_runs(
            experiments, f"tags.step = '{step}'", order_by=["attributes.start_time DESC"]
        )
        return run

    def gateway(self, path: str) -> str:
        return f"http://127.0.0.1:{self.copy.env['GATEWAY_PORT']}{path}"


def _write_inputs(root: Path, folder: Path) -> None:
    """The user's own files the README names: a folder, listings.parquet and listings.db."""
    train, test = generate_splits(seed=1, **{f"{k}_rows": v for k, v in FOLDER_ROWS.items()})
    folder.mkdir()
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    test.to_parquet(root / "listings.parquet", index=False)
    listings = pd.concat([train.assign(year=2023), test.assign(year=2024)], ignore_index=True)
    with contextlib.closing(sqlite3.connect(root / "listings.db")) as db:
        listings.to_sql("listings", db, index=False)


def _write_tables(url: str) -> None:
    from sqlalchemy import create_engine

    train, test = generate_splits(seed=2, **{f"{k}_rows": v for k, v in FOLDER_ROWS.items()})
    engine = create_engine(url)
    with engine.begin() as connection:
        train.to_sql("listings_train", connection, index=False)
        test.to_sql("listings_test", connection, index=False)
    engine.dispose()


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Readme]:
    tmp = tmp_path_factory.mktemp("readme")
    copy = make_project_copy(tmp / "project")
    folder = tmp / "folder"
    _write_inputs(copy.root, folder)
    with running_postgres() as url:
        _write_tables(url)
        port = url.rsplit(":", 1)[1].split("/")[0]
        state = Readme(copy, folder, url, MlflowClient(copy.tracking_uri, copy.tracking_uri))
        state.substitutions = dict(
            zip(
                PLACEHOLDERS,
                (
                    str(folder),
                    "PGPASSWORD=unused",
                    f"postgresql://postgres@127.0.0.1:{port}/postgres",
                    state.gateway(""),
                ),
                strict=True,
            )
        )
        try:
            yield state
        finally:
            copy.run("make stop")


# The checks, one per README command: run it, then assert what it must have done.


def check_make_run(readme: Readme, command: str) -> None:
    before = readme.versions() if (readme.root / "mlflow.db").exists() else 0
    result = readme.run(command)
    assert f"gateway       {readme.gateway('')}" in result.stdout
    assert readme.versions() == before + 1
    assert http_ok(readme.gateway("/ready"))
    served = json.loads((readme.root / ".run" / "served-model.json").read_text())
    assert served["uri"] == f"models:/{MODEL}/{readme.aliases()['champion']}"


def check_activate(readme: Readme, command: str) -> None:
    result = readme.run(f"{command} && command -v mlflow")
    assert Path(result.stdout.strip()).resolve() == (readme.root / ".venv/bin/mlflow").resolve()


def check_new_version(readme: Readme, command: str) -> None:
    before = readme.versions()
    result = readme.run(command)
    assert readme.versions() == before + 1
    assert f"version {before + 1}: verdict " in result.stdout


def check_train(readme: Readme, command: str) -> None:
    before = readme.versions()
    result = readme.run(command)
    assert f"registered: {MODEL} version {before + 1}" in result.stdout
    assert readme.latest_run("train").data.tags["preset"] == "notebook"


def check_evaluate(readme: Readme, command: str) -> None:
    readme.run(command)
    assert readme.client.get_model_version(MODEL, "3").tags["verdict"]


def check_promote(readme: Readme, command: str) -> None:
    readme.run(command)
    assert readme.aliases()["champion"] == 3


def check_rollback(readme: Readme, command: str) -> None:
    previous = readme.aliases()["previous-champion"]
    readme.run(command)
    assert readme.aliases()["champion"] == previous


def check_mlflow_ui(readme: Readme, command: str) -> None:
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=readme.root,
        env=readme.copy.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{readme.copy.env['MLFLOW_UI_PORT']}"
    try:
        wait_until(lambda: http_ok(url) or process.poll() is not None, 90, "make mlflow-ui")
        answer = requests.get(
            f"{url}/api/2.0/mlflow/registered-models/get", params={"name": MODEL}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["registered_model"]["name"] == MODEL
    finally:
        stop_process_group(process)


def check_env_example(readme: Readme, command: str) -> None:
    (readme.root / ".env.example").unlink()
    readme.run(command)
    assert (readme.root / ".env.example").read_text() == (PROJECT_DIR / ".env.example").read_text()


def check_dotenv(readme: Readme, command: str) -> None:
    readme.run(command)
    dotenv = readme.root / ".env"
    try:
        assert dotenv.read_text() == (readme.root / ".env.example").read_text()
        dotenv.write_text(
            dotenv.read_text().replace("GATEWAY_CONNECTIONS=100", "GATEWAY_CONNECTIONS=13")
        )
        read = readme.run(
            "env -u GATEWAY_CONNECTIONS python -c "
            "'from config.settings import Settings; print(Settings.from_env().gateway_connections)'"
        )
        assert read.stdout.strip() == "13"
    finally:
        dotenv.unlink(missing_ok=True)


def check_make_data(readme: Readme, command: str) -> None:
    readme.run(command)
    train, test = generate_splits()
    assert len(pd.read_csv(readme.root / "data" / "train.csv")) == len(train)
    assert len(pd.read_csv(readme.root / "data" / "test.csv")) == len(test)


def _check_scored(readme: Readme, command: str, rows: int, output: str) -> None:
    readme.run(command)
    scored = (
        pd.read_csv(readme.root / output)
        if output.endswith(".csv")
        else pd.read_parquet(readme.root / output)
    )
    assert len(scored) == rows
    version = readme.aliases()["champion"]
    assert (scored["model_version"].astype(str) == str(version)).all()
    assert scored["price"].notna().sum() > rows // 2
    assert readme.latest_run("batch_score").data.tags["model_uri"] == f"models:/{MODEL}/{version}"


def check_batch_csv(readme: Readme, command: str) -> None:
    rows = len(pd.read_csv(readme.root / "data" / "test.csv"))
    _check_scored(readme, command, rows, "scored.parquet")


def check_batch_spark(readme: Readme, command: str) -> None:
    _check_scored(readme, command, FOLDER_ROWS["test"], "scored.parquet")


def check_batch_table(readme: Readme, command: str) -> None:
    _check_scored(readme, command, sum(FOLDER_ROWS.values()), "scored.csv")


def check_make_run_data(readme: Readme, command: str) -> None:
    check_make_run(readme, command)
    assert str(readme.folder) in readme.latest_run("ingest").data.tags["source"]


def _check_ingested(readme: Readme, command: str, source: str, rows: dict[str, int]) -> None:
    check_new_version(readme, command)
    ingest = readme.latest_run("ingest")
    assert source in ingest.data.tags["source"]
    for split, count in rows.items():
        assert ingest.data.metrics[f"{split}_rows_read"] == count


def check_main_folder(readme: Readme, command: str) -> None:
    _check_ingested(readme, command, f"CSV folder {readme.folder}", FOLDER_ROWS)


def check_main_postgres(readme: Readme, command: str) -> None:
    _check_ingested(readme, command, "SQL database postgresql+psycopg://postgres@", FOLDER_ROWS)


def check_main_query(readme: Readme, command: str) -> None:
    _check_ingested(readme, command, "SQL database sqlite:///listings.db", FOLDER_ROWS)


def check_main_split(readme: Readme, command: str) -> None:
    _check_ingested(readme, command, f"CSV folder {readme.folder}", {})
    ingest = readme.latest_run("ingest")
    assert ingest.data.params["test"] == ""
    metrics = ingest.data.metrics
    assert metrics["train_rows_read"] + metrics["test_rows_read"] == FOLDER_ROWS["train"]
    assert metrics["test_rows_read"] > 0


def check_curl(readme: Readme, command: str) -> None:
    answer = json.loads(readme.run(command).stdout)
    (prediction,) = answer["predictions"]
    assert prediction["price"] > 1000
    assert prediction["price_low"] < prediction["price"] < prediction["price_high"]
    assert prediction["outside_training_range"] == ""


def _send_traffic(readme: Readme, rows: int) -> None:
    """Priced rows through the running gateway, then wait until the request log holds them."""
    key = (readme.root / ".run" / "api-key").read_text()
    frame = generate_listings(rows, seed=5, dirty=False)[list(FEATURE_NAMES)]
    answer = requests.post(
        readme.gateway("/invocations"),
        headers={"X-API-Key": key},
        json={"dataframe_records": frame.to_dict("records")},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    log = readme.root / ".run" / "logs" / "requests.jsonl"

    def logged() -> bool:
        lines = log.read_text().splitlines() if log.exists() else []
        return any(json.loads(line).get("rows") == rows for line in lines)

    wait_until(logged, 30, "request log")


def check_monitor(readme: Readme, command: str) -> None:
    _send_traffic(readme, 1000)
    result = readme.run(command)
    report = json.loads((readme.root / "drift_report.json").read_text())
    assert report["rows"] == 1001  # the traffic and README's curl
    assert report["drifted"] == []
    assert "drifted: none" in result.stdout
    assert readme.latest_run("monitor").data.metrics["drift_net_usable_area"] < 0.25


def check_monitor_module(readme: Readme, command: str) -> None:
    result = readme.run(command)
    assert "1001 rows; drifted: none" in result.stdout


def _stored_price(readme: Readme, request_id: str) -> tuple[str, float] | None:
    """(listing id, price) of row 0 of `request_id` in the prediction store, if there yet."""
    with contextlib.closing(sqlite3.connect(readme.root / ".run" / "predictions.db")) as db:
        return db.execute(
            "SELECT listing_id, price FROM predictions WHERE request_id = ? AND row_index = 0",
            (request_id,),
        ).fetchone()


def check_valuation_with_listing_id(readme: Readme, command: str) -> None:
    (prediction,) = json.loads(readme.run(command).stdout)["predictions"]
    wait_until(lambda: _stored_price(readme, "valuation-0001"), 10, "prediction store")
    assert _stored_price(readme, "valuation-0001") == ("CL-1234", prediction["price"])


def check_outcomes(readme: Readme, command: str) -> None:
    answer = json.loads(readme.run(command).stdout)
    assert {k: answer[k] for k in ("created", "duplicate", "corrected", "unknown")} == {
        "created": 1,
        "duplicate": 0,
        "corrected": 1,
        "unknown": 0,
    }
    assert [r["request_id"] for r in answer["results"]] == ["valuation-0001"] * 2


def _served_version(readme: Readme) -> str:
    return json.loads((readme.root / ".run" / "served-model.json").read_text())["version"]


def check_make_accuracy(readme: Readme, command: str) -> None:
    readme.run(command)
    table = json.loads((readme.root / "live_accuracy.json").read_text())
    version = _served_version(readme)
    (overall,) = [r for r in table if (r["model_version"], r["sector"]) == (version, "all")]
    _, price = _stored_price(readme, "valuation-0001") or ("", 0.0)
    assert (overall["count"], overall["mae"]) == (1, pytest.approx(abs(price - 21900)))
    assert readme.latest_run("monitor-accuracy").data.tags["model_version"] == version


def check_accuracy_module(readme: Readme, command: str) -> None:
    result = readme.run(command)
    assert f"version {_served_version(readme)}: 1 outcomes, MAE " in result.stdout


def check_copy_env(readme: Readme, command: str) -> None:
    readme.run(command)
    docker = readme.root / "docker"
    assert (docker / ".env").read_text() == (docker / ".env.example").read_text()


CURL = (
    'curl -s http://127.0.0.1:8000/invocations -H "X-API-Key: $(cat .run/api-key)" '
    '-H \'Content-Type: application/json\' -d \'{"dataframe_records": [{"type": '
    '"departamento", "sector": "las condes", "net_usable_area": 140, "net_area": 170, '
    '"n_rooms": 3, "n_bathroom": 2, "latitude": -33.4172, "longitude": -70.5476}]}\''
)
VALUATION = (
    'curl -s http://127.0.0.1:8000/invocations -H "X-API-Key: $(cat .run/api-key)" '
    "-H 'X-Request-ID: valuation-0001' -H 'Content-Type: application/json' -d "
    '\'{"dataframe_records": [{"type": "casa", "sector": "vitacura", "net_usable_area": 220, '
    '"net_area": 480, "n_rooms": 4, "n_bathroom": 3, "latitude": -33.3876, "longitude": '
    '-70.5632}], "listing_ids": ["CL-1234"]}\''
)
OUTCOMES = (
    'curl -s http://127.0.0.1:8000/outcomes -H "X-API-Key: $(cat .run/api-key)" '
    '-H \'Content-Type: application/json\' -d \'{"outcomes": [{"request_id": '
    '"valuation-0001", "row": 0, "price": 21500, "date": "2025-11-28"}, {"listing_id": '
    '"CL-1234", "price": 21900, "date": "2025-12-02"}]}\''
)
MAIN = "mlflow run . -e main --env-manager local"
BATCH = "mlflow run . -e batch_score --env-manager local"
CHECKS: dict[str, Callable[[Readme, str], None]] = {
    "make run": check_make_run,
    "source .venv/bin/activate": check_activate,
    MAIN: check_new_version,
    "mlflow run . -e train --env-manager local -P preset=notebook": check_train,
    "mlflow run . -e evaluate --env-manager local -P model_version=3": check_evaluate,
    "mlflow run . -e promote --env-manager local -P model_version=3 -P force=true": check_promote,
    "mlflow run . -e rollback --env-manager local": check_rollback,
    "make mlflow-ui": check_mlflow_ui,
    "make data": check_make_data,
    "python -m config.settings > .env.example": check_env_example,
    "cp .env.example .env": check_dotenv,
    f"{BATCH} -P input=data/test.csv -P output=scored.parquet": check_batch_csv,
    f"{BATCH} -P input=listings.parquet -P output=scored.parquet "
    "-P engine=spark": check_batch_spark,
    f"{BATCH} -P input=sqlite:///listings.db -P table=listings "
    "-P output=scored.csv": check_batch_table,
    "make run DATA=/path/to/folder": check_make_run_data,
    f"{MAIN} -P source=/path/to/folder": check_main_folder,
    f"PGPASSWORD=... {MAIN} -P source=postgresql://user@host:5432/db -P train=listings_train "
    "-P test=listings_test": check_main_postgres,
    f'{MAIN} -P source=sqlite:///listings.db -P train="SELECT * FROM listings WHERE year < 2024"'
    ' -P test="SELECT * FROM listings WHERE year >= 2024"': check_main_query,
    f'{MAIN} -P source=/path/to/folder -P test=""': check_main_split,
    CURL: check_curl,
    "mlflow run . -e monitor --env-manager local": check_monitor,
    "python -m steps.monitor --fail-on-drift": check_monitor_module,
    VALUATION: check_valuation_with_listing_id,
    OUTCOMES: check_outcomes,
    "make accuracy": check_make_accuracy,
    "python -m steps.monitor accuracy --window-days 7": check_accuracy_module,
    "cp docker/.env.example docker/.env": check_copy_env,
}


def normalized(command: str) -> str:
    return " ".join(command.split())


def _param(command: str):
    # Not slow-marked: every command runs on the state the commands before it left.
    return pytest.param(command, id=normalized(command)[:60])


@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS])
def test_readme_command(readme: Readme, command: str) -> None:
    check = CHECKS.get(normalized(command))
    if check is None:
        assert command in EXCEPTIONS, (
            f"README command {command!r} is neither run by {__name__} nor listed in README "
            "under 'Commands checked otherwise'"
        )
        return
    assert command not in EXCEPTIONS, f"{command!r} is run here: remove it from the list"
    check(readme, command)


def test_every_check_and_exception_is_a_readme_command() -> None:
    commands = {normalized(c) for c in COMMANDS}
    assert sorted(set(CHECKS) - commands) == []
    assert sorted(set(EXCEPTIONS) - set(COMMANDS)) == []
    assert [p for p in PLACEHOLDERS if not any(p in c for c in COMMANDS)] == []
