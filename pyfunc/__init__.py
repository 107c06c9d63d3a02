"""The served model: feature schema, input validation and the MLflow PythonModel.

Kept import-light: `pyfunc.schema` and `pyfunc.settings` need neither pandas nor MLflow,
so the gateway can use them on its request path.
"""
