"""A model to predict with, by any name a user has for it: a checkpoint file, ``dlib`` (dlib's untouched age
model), or an MLflow model URI (``runs:/RUN/model``, ``models:/faceage@champion``), with what says which model
it is: its MLflow run and that run's headline metrics."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from faceage.errors import FaceageError
from faceage.serving.engines import TorchEngine
from faceage.serving.photos import AgeEstimator
from faceage.tracking.store import server_answers, tracking_uri

log = logging.getLogger(__name__)
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "file:/")
SHOWN_METRICS = ("test.mae", "val.mae", "test.pi_coverage", "test.pi_width")  # the run's figures a user is shown


@dataclass
class LoadedModel:
    """An :class:`AgeEstimator` with the landmark file its face finder uses, its name as the user gave it, its
    MLflow run (if known) and that run's :data:`SHOWN_METRICS` (where the store can be read)."""

    estimator: AgeEstimator
    name: str
    landmarks: Path | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict:
        """What a user is shown about the model, JSON-ready."""
        estimator = self.estimator
        return {
            "model": self.name,
            "run_id": self.run_id,
            "metrics": self.metrics,
            "dataset": estimator.dataset,
            "synthetic": estimator.synthetic,
            "interval_level": estimator.level,
            "chip_size": estimator.chip_size,
            "precision": estimator.engine.precision,
        }


def load_any(name: str, flip: bool | None = None, bf16: bool | None = None) -> LoadedModel:
    """The model ``name`` names: an MLflow model URI is loaded through MLflow (its own face settings and
    landmark file), anything else as :class:`AgeEstimator` takes it; ``flip`` and ``bf16`` as
    :class:`AgeEstimator` takes them."""
    if not name.startswith(MLFLOW_SCHEMES):
        estimator = AgeEstimator(name, flip=flip, bf16=bf16)
        run_id = estimator.run_id
        return LoadedModel(estimator, name, None, run_id, run_metrics(run_id, tracking_uri()))
    import mlflow
    from mlflow.exceptions import MlflowException

    # MLflow leaves what it downloads in a new temporary folder; this one lasts as long as the process, which
    # may read the landmark file from it in face-finding workers at any time
    folder = tempfile.mkdtemp(prefix="faceage-model-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    try:
        loaded = mlflow.pyfunc.load_model(name, dst_path=folder)
        served = loaded.unwrap_python_model()
        if not hasattr(served, "estimator"):
            raise FaceageError(f"{name} is not a faceage model")
        graph = not isinstance(served.estimator.engine, TorchEngine)
        if (flip is not None and served.estimator.flip != flip) or (bf16 and graph):
            # its graph has mirror-image averaging built in, or left out, or runs in float32: the checkpoint runs
            loaded = mlflow.pyfunc.load_model(name, dst_path=folder, model_config={"engine": "pytorch"})
            served = loaded.unwrap_python_model()
        if flip is not None:
            served.estimator.flip = flip
        if bf16 is not None and isinstance(served.estimator.engine, TorchEngine):
            served.estimator.engine.set_precision(bf16)
    except (MlflowException, OSError) as error:
        raise FaceageError(f"cannot load the MLflow model {name}: {str(error).splitlines()[0]}") from None
    run_id = loaded.metadata.run_id
    return LoadedModel(served.estimator, name, served.landmarks, run_id, run_metrics(run_id, mlflow.get_tracking_uri()))


def run_metrics(run_id: str | None, uri: str) -> dict[str, float]:
    """The run's :data:`SHOWN_METRICS` in the store at ``uri``; none when there is no run, no such store (a
    SQLite file is never created here) or it cannot be read."""
    store = Path(uri.removeprefix("sqlite:///"))
    if run_id is None or (uri.startswith("sqlite:///") and not (store.is_file() and store.stat().st_size)):
        return {}
    if not server_answers(uri):
        return {}
    from mlflow import MlflowClient

    try:
        metrics = MlflowClient(uri).get_run(run_id).data.metrics
    except Exception as error:  # any store failure only hides the figures
        log.warning("cannot read MLflow run %s at %s: %s", run_id, uri, error)
        return {}
    return {key: metrics[key] for key in SHOWN_METRICS if key in metrics}
