"""The served model: feature schema, input validation and the MLflow PythonModel.

Kept import-light: `pyfunc.schema`, `pyfunc.contract` (the validation rules) and
`pyfunc.settings` need neither pandas nor MLflow, so the gateway uses them on its request path.
"""
