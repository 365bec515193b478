"""MLflow models-from-code entry point: the registered model is defined by code, not a pickle."""

from mlflow.models import set_model

from prefect_mlops.mlops.pyfunc import PipelinePyfunc

set_model(PipelinePyfunc())
