"""The served model: what `predict` needs, and nothing else.

Feature schema, validation contract and validator, fast path, compiled trees, training profile,
the MLflow PythonModel and its entry (`served.py`); `drift.py` measures traffic against the
profile. A logged version's `code/` holds the modules `served.py` imports, directly or not
(`pyfunc.model.code_files`), not the whole folder. Nothing here imports `config`, `steps`,
`serving` or `gateway` (tests/unit/test_dependencies.py). `pyfunc.schema`, `pyfunc.contract`
and `pyfunc.drift` need neither pandas nor MLflow, so the gateway uses them on its request path.
"""
