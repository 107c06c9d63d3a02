"""Runtime settings of every service (`config.settings`) and the base of the errors a user can
fix (`config.errors`). Import-light: pydantic only, so the gateway uses it too."""
