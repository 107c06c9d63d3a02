"""The HTTP gateway in front of `mlflow models serve`: API keys, error hygiene, request log,
Prometheus metrics and the API's documentation.

Import-light on purpose: neither MLflow nor pandas is ever imported here, so each gunicorn
worker stays small. Build the app with `gateway.app.create_app()`.
"""
