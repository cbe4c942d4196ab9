"""Entry point of the logged MLflow model (MLflow's "models from code"): names the model class to load."""

from mlflow.models import set_model

from faceage.serving.pyfunc import PhotoAgeModel

set_model(PhotoAgeModel())
