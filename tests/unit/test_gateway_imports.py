"""The gateway stays light: no pandas, no MLflow, nothing done at import time; it works with
the model libraries missing, as in its image (docker/Dockerfile, target `gateway`)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.gateway import ALICE_KEY, gateway_env

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


# Run with the model libraries made unimportable; a stand-in model server prices every row.
BLOCKED_SCRIPT = """
import http.server, importlib.abc, json, os, sys, threading
BLOCKED = {"pandas", "mlflow", "sklearn", "numpy", "scipy", "pyarrow", "category_encoders"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed in the gateway image")

sys.meta_path.insert(0, Block())

class Model(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        rows = len(next(iter(payload["inputs"].values())))  # the checked columns
        body = json.dumps({"predictions": [{"price": 5000.0, "outside_training_range": ""}] * rows})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Model)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["GATEWAY_UPSTREAM_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
import gateway.app
from pyfunc.schema import example_listing
app = gateway.app.create_app()
client, key = app.test_client(), {"X-API-Key": sys.argv[1]}
statuses = {path: client.get(path, headers=key).status_code
            for path in ("/health", "/openapi.json", "/docs", "/metrics")}
two_rows = {"dataframe_records": [example_listing()] * 2}
priced = client.post("/invocations", json=two_rows, headers=key)
bad = client.post("/invocations", json={"dataframe_records": [{"type": "casa"}]}, headers=key)
gateway.app.gateway_of(app).close()
server.shutdown()
print(json.dumps({
    "statuses": statuses,
    "priced": [priced.status_code, [row["price"] for row in priced.json["predictions"]]],
    "bad": [bad.status_code, bad.json["error_code"]],
    "loaded": sorted(BLOCKED & {name.partition(".")[0] for name in sys.modules}),
}))
"""


def test_gateway_serves_with_the_model_libraries_missing(tmp_path):
    env = {**gateway_env(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_SCRIPT, ALICE_KEY],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "statuses": {"/health": 200, "/openapi.json": 200, "/docs": 200, "/metrics": 200},
        "priced": [200, [5000.0, 5000.0]],
        "bad": [400, "INVALID_FEATURES"],
        "loaded": [],
    }
