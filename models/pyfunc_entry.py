"""MLflow "model from code" entry point: the model class MLflow loads for a LifecycleModel."""

from mlflow.models import set_model

from models.pyfunc import LifecyclePyfunc

set_model(LifecyclePyfunc())
