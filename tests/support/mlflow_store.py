"""A throw-away MLflow tracking store and registry, as the pipeline's unit tests use it.

MLflow, pandas and scikit-learn are imported inside the methods, so the gateway's unit tests,
which share the conftest that builds a Store, do not pay for them.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models.model import ModelInfo
    from sklearn.pipeline import Pipeline

    from pyfunc.model import PriceInterval


# The range of the models tests log without calibrating it: from 0.8 to 1.25 times the price.
LOW_FACTOR, HIGH_FACTOR = 0.8, 1.25


def stated_interval() -> PriceInterval:
    from pyfunc.model import PriceInterval

    return PriceInterval(0.8, math.log(LOW_FACTOR), math.log(HIGH_FACTOR))


@dataclasses.dataclass(frozen=True)
class Store:
    """A sqlite tracking store and registry under a temporary folder."""

    root: Path
    experiment_id: str

    def register(self, pipeline: Pipeline, train: pd.DataFrame, name: str) -> ModelInfo:
        """Log `pipeline` (profiled on `train`, with `stated_interval()`) in a new run;
        registers a version of `name`."""
        import mlflow

        from pyfunc.model import log_model
        from pyfunc.profile import build_profile

        with mlflow.start_run(experiment_id=self.experiment_id):
            return log_model(pipeline, build_profile(train), train.head(3), name, stated_interval())

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient()

    def alias(self, name: str, alias: str) -> str | None:
        """The version an alias points at, as a string, or None when the alias is not set."""
        from steps.registry import alias_version

        return alias_version(name, alias)

    def stages(self, name: str) -> dict[str, str]:
        """Stage of every version of `name`, by version."""
        return {
            str(v.version): v.current_stage
            for v in self.client().search_model_versions(f"name = '{name}'")
        }

    @staticmethod
    def model_files(info: ModelInfo) -> Path:
        """The folder of a logged model's files (MLmodel, requirements.txt, ...). MLflow 3 keeps
        them under the experiment's `models/<model id>/artifacts`, not under the run's own
        artifact folder."""
        from urllib.parse import urlparse

        import mlflow

        location = Path(urlparse(mlflow.get_logged_model(info.model_id).artifact_location).path)
        assert (location / "MLmodel").is_file()
        return location

    @classmethod
    def delete_model_files(cls, info: ModelInfo) -> None:
        """Delete every file of a logged model."""
        shutil.rmtree(cls.model_files(info))
