"""The one-hop baseline of `make bench`: what a user would build instead of our two hops.

A minimal FastAPI app, run by uvicorn with one worker, that loads the same pyfunc model in
its own process (BASELINE_MODEL_URI) and answers the same `dataframe_split` body on
`POST /invocations` with the same `{"predictions": [...]}` answer. It has none of our
gateway's checks, keys, logs or metrics, and MLflow's own parsing only as far as the model's
`predict` does it (signature enforcement):

    BASELINE_MODEL_URI=models:/property-friends@champion \
        uvicorn tests.benchmarks.baseline_app:app --workers 1 --port 5099
"""

from __future__ import annotations

import os

import mlflow
import orjson
import pandas as pd
from fastapi import FastAPI, Request, Response
from mlflow.exceptions import MlflowException

model = mlflow.pyfunc.load_model(os.environ["BASELINE_MODEL_URI"])
app = FastAPI()


@app.get("/ping")
async def ping() -> Response:
    return Response(b"\n", media_type="application/json")


@app.post("/invocations")
async def invocations(request: Request) -> Response:
    split = orjson.loads(await request.body())["dataframe_split"]
    frame = pd.DataFrame(split["data"], columns=split["columns"])
    try:
        predictions = model.predict(frame)
    except MlflowException as error:
        return Response(error.serialize_as_json(), 400, media_type="application/json")
    answer = {"predictions": predictions.to_dict(orient="records")}
    return Response(orjson.dumps(answer), media_type="application/json")
