"""The gateway stays light: no pandas, no MLflow, nothing done at import time."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.gateway import gateway_env

SCRIPT = """
import json, os, sys
before = set(os.listdir(sys.argv[1]))
import gateway.app
imported_at_import = sorted(m for m in ("pandas", "mlflow", "numpy") if m in sys.modules)
threads_at_import = __import__("threading").active_count()
files_at_import = sorted(set(os.listdir(sys.argv[1])) - before)
app = gateway.app.create_app()
app.test_client().get("/health")
gateway.app.gateway_of(app).close()
print(json.dumps({
    "at_import": imported_at_import, "files_at_import": files_at_import,
    "threads_at_import": threads_at_import,
    "after_app": sorted(m for m in ("pandas", "mlflow", "numpy") if m in sys.modules),
}))
"""


def test_gateway_imports_neither_pandas_nor_mlflow(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    env = {**gateway_env(state), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "at_import": [],
        "files_at_import": [],
        "threads_at_import": 1,
        "after_app": [],
    }
