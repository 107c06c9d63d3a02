"""Pipeline steps: one module per MLflow entry point."""
