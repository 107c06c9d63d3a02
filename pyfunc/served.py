"""Model-from-code entry: MLflow runs this file to build the served model (no pickled class)."""

from mlflow.models import set_model

from pyfunc.model import PropertyValuationModel

set_model(PropertyValuationModel())
