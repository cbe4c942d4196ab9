"""The trained model as an MLflow ``pyfunc`` model: image bytes in, one row per face out.

The logged model carries the checkpoint, its ONNX graph, dlib's landmark file and this package's code, with
pinned pip requirements, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work outside this
repository. Its ``model_config`` ``engine`` says what runs the network: ``onnxruntime`` (the graph; the
default) or ``pytorch`` (the checkpoint), chosen at load time with ``model_config={"engine": "pytorch"}`` or,
for ``mlflow models serve``, ``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"engine": "pytorch"}'``.
Its input is a DataFrame with a binary column ``image`` (base64 in JSON requests, in every request format) and
an optional boolean ``aligned`` (the image is a ready face crop); its optional parameter ``over`` (an age) adds
the decision whether each face is that old or older (``yes``, ``no``, ``uncertain``, from its interval); its
``model_config`` also holds the face settings (``faces.*``). A value of the wrong type, an image over
``faces.max_megapixels`` and rows not started within the server's request timeout get an error row each.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import tempfile
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType
from PIL import Image

import faceage
from faceage.data.faces import landmarks_path
from faceage.errors import FaceageError
from faceage.model.checkpoint import describe
from faceage.params import saved_faces
from faceage.sections import FacesParams
from faceage.serving.export import export_model
from faceage.serving.photos import AgeEstimator, PhotoFaces, find_faces
from faceage.tracking.registry import MODEL_IN_RUN
from faceage.tracking.runs import RunTracker

log = logging.getLogger(__name__)
REQUIREMENTS = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "pillow",
    "pyyaml",
    "dlib-bin",
    "facenet-pytorch",
    "mlflow",
    "onnxruntime",
)
ENGINES = {"onnxruntime": "graph", "pytorch": "checkpoint"}  # model_config engine -> the artifact it runs
LOGGED_ENGINE = "onnxruntime"  # what a logged model runs unless told otherwise
OUTPUT_COLUMNS = ["input", "face", "left", "top", "right", "bottom", "score", "age_years", "age"]
OPTIONAL_COLUMNS = ["age_low", "age_high", "interval", "over", "female_probability", "error"]
SIGNATURE = ModelSignature(
    # aligned is checked by the model itself: for a boolean column MLflow's request parser reads any string as true
    inputs=Schema([ColSpec("binary", "image"), ColSpec(AnyType(), "aligned", required=False)]),
    outputs=Schema(
        [ColSpec("long", name) for name in OUTPUT_COLUMNS[:6]]
        + [ColSpec("double", "score"), ColSpec("double", "age_years"), ColSpec("string", "age")]
        + [ColSpec("double", "age_low", required=False), ColSpec("double", "age_high", required=False)]
        + [ColSpec("string", "interval", required=False), ColSpec("string", "over", required=False)]
        + [ColSpec("double", "female_probability", required=False), ColSpec("string", "error", required=False)]
    ),
    params=ParamSchema([ParamSpec("over", "double", None)]),
)


class PhotoAgeModel(mlflow.pyfunc.PythonModel):
    """Decode, detect, align and predict: one output row per face, a row with ``face`` -1 for a photo without
    one, and a row with ``error`` for bytes that are not a readable image."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = dict(context.model_config or {})
        engine = config.pop("engine", "pytorch")  # models logged before the graph have only the checkpoint
        if engine not in ENGINES or ENGINES[engine] not in context.artifacts:
            offered = [name for name, artifact in ENGINES.items() if artifact in context.artifacts]
            raise FaceageError(f"model_config engine: {engine!r} is not offered by this model; expected {offered}")
        self.faces = saved_faces(config, "model_config")
        self.landmarks = Path(context.artifacts["landmarks"])
        self.estimator = AgeEstimator(context.artifacts[ENGINES[engine]], self.faces)
        if self.estimator.synthetic:
            log.warning("this model learnt ages from synthetic drawn faces: its ages of real photos mean nothing")

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        over = (params or {}).get("over")
        try:
            self.estimator.check_over(over)
        except FaceageError as error:  # a 400 answer from the scoring server
            raise MlflowException.invalid_parameter_value(str(error)) from None
        deadline = time.monotonic() + float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
        aligned = model_input["aligned"] if "aligned" in model_input else pd.Series(None, index=model_input.index)
        photos = [
            self.photo(str(row), image, ready, deadline)
            for row, (image, ready) in enumerate(zip(model_input["image"], aligned, strict=True))
        ]
        rows = []
        for row, result in enumerate(self.estimator.results(photos, over=over)):
            if "error" in result:
                rows.append({"input": row, "face": -1, "error": result["error"]})
            else:
                rows += [face_row(row, face) for face in result["faces"]] or [{"input": row, "face": -1}]
        frame = pd.DataFrame(rows, columns=[*OUTPUT_COLUMNS, *OPTIONAL_COLUMNS])
        return frame.astype(object).where(frame.notna(), None)  # missing values as null in JSON, not NaN

    def photo(self, name: str, image: object, aligned: object, deadline: float) -> PhotoFaces:
        """One input row's faces, or an error that names the field at fault, or says the request's time
        (the server's ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``) ran out before this row was started."""
        if time.monotonic() > deadline:
            limit = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()
            return PhotoFaces(name, error=f"not processed: the request's time limit of {limit} s ran out")
        if not is_boolean(aligned) and not is_missing(aligned):
            return PhotoFaces(name, error=f"aligned: expected true or false, got {aligned!r}")
        data = image_bytes(image)
        if isinstance(data, str):
            return PhotoFaces(name, error=data)
        ready = is_boolean(aligned) and bool(aligned)  # a missing value is false
        return find_faces(name, data, self.estimator.chip_size, self.faces, ready, self.landmarks)


def is_boolean(value: object) -> bool:
    """Whether ``value`` is a boolean, Python's or numpy's (never a string or a number)."""
    return isinstance(value, bool | np.bool_)


def is_missing(value: object) -> bool:
    """Whether ``value`` is a missing value (``None``, NaN) rather than a value of the wrong type."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def image_bytes(image: object) -> bytes | str:
    """An ``image`` value as bytes, or the error to answer. The request formats ``instances`` and ``inputs``
    reach the model with the base64 text undecoded (as a string or its bytes): text that is all base64 is
    decoded, as no image file is (every format's header holds other bytes)."""
    if not isinstance(image, str | bytes | bytearray | memoryview):
        return f"image: expected image bytes (base64 in JSON), got {type(image).__name__}"
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a string with characters outside ASCII
        return "image: not base64-encoded bytes" if isinstance(image, str) else bytes(image)


def face_row(row: int, face: dict) -> dict:
    """One output row from a face's result."""
    box = dict(zip(("left", "top", "right", "bottom"), face["box"] or (None,) * 4, strict=True))
    optional = {name: face[name] for name in OPTIONAL_COLUMNS if name in face}
    ages = {"age_years": face["age_years"], "age": face["age"]}
    return {"input": row, "face": face["face"], **box, "score": face["score"], **ages, **optional}


def example_input(chip: np.ndarray) -> pd.DataFrame:
    """An input example: one aligned face chip as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(chip).save(buffer, format="PNG")
    return pd.DataFrame({"image": [buffer.getvalue()], "aligned": [True]})


def log_age_model(
    tracker: RunTracker,
    checkpoint: str | Path,
    faces: FacesParams,
    chip: np.ndarray,
    dataset: dict[str, str],
    name: str = MODEL_IN_RUN,
) -> None:
    """Log the checkpoint and its ONNX graph as the pyfunc model ``name`` of ``tracker``'s run (a failure only
    warns; a graph that cannot be exported leaves the model on PyTorch, with a warning).

    ``chip``, an aligned face, becomes the input example; ``dataset`` (what the model learnt from: ``name``,
    ``kind``) goes into the model's metadata.
    """

    def log_model() -> None:
        mlflow.set_tracking_uri(tracker.uri)
        with tempfile.TemporaryDirectory(prefix="faceage-graph-") as folder, mlflow.start_run(run_id=tracker.run_id):
            artifacts, engine = {"checkpoint": str(checkpoint), "landmarks": str(landmarks_path())}, "pytorch"
            try:
                export_model(checkpoint, Path(folder) / "model.onnx", "onnx")
                artifacts["graph"], engine = str(Path(folder) / "model.onnx"), LOGGED_ENGINE
            except Exception as error:  # torch.onnx raises many types: the model is still logged, on PyTorch
                log.warning("%s is logged without its ONNX graph (it runs on PyTorch): %s", name, describe(error))
            mlflow.pyfunc.log_model(
                name=name,
                python_model=str(Path(__file__).with_name("mlflow_model.py")),
                artifacts=artifacts,
                code_paths=[str(Path(faceage.__file__).parent)],
                signature=SIGNATURE,
                input_example=example_input(chip),
                pip_requirements=[f"{package}=={version(package)}" for package in REQUIREMENTS],
                model_config={**asdict(faces), "engine": engine},
                metadata={"dataset": dataset},
            )

    tracker.call(log_model)
