"""The MLflow Model Registry: which registered version carries an alias, and registering a run's model."""

from __future__ import annotations

from faceage.tracking.store import mlflow_client, tracking_uri

MODEL_IN_RUN = "model"  # name of a run's logged MLflow model
RUN_DESCRIPTION_TAG = "mlflow.note.content"  # a run's description in MLflow's UI: its model card


def champion_run(model_name: str, alias: str, uri: str | None = None) -> tuple[str, str] | None:
    """``(version, run_id)`` of the registered model version that carries ``alias``, if any."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return str(version.version), version.run_id


def register_with_alias(run_id: str, model_name: str, alias: str, uri: str | None = None) -> str:
    """Register the run's MLflow model (:data:`MODEL_IN_RUN`) as a new version of ``model_name``, described by
    the run's model card, and point ``alias`` at it; return the version."""
    import mlflow

    uri = uri or tracking_uri()
    client = mlflow_client(uri)
    mlflow.set_tracking_uri(uri)
    version = str(mlflow.register_model(f"runs:/{run_id}/{MODEL_IN_RUN}", model_name).version)
    card = client.get_run(run_id).data.tags.get(RUN_DESCRIPTION_TAG)
    if card:
        client.update_model_version(model_name, version, description=card)
    client.set_registered_model_alias(model_name, alias, version)
    return version
