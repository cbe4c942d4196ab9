"""Static int8 quantisation of an exported ONNX graph: calibrated on validation faces, checked on the other
validation faces, and written only when their MAE moves by less than a tolerance.

Only the convolutions are quantised (weights per channel, activations per tensor, QDQ): the heads, the age
read-out and the calibration stay in float32. Quantising every operator moved a UTKFace student's ages four times
as much (0.68 against 0.16 years on average) for 1.3 times the speed."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from faceage.data.manifest import load_images, load_manifest
from faceage.errors import FaceageError
from faceage.model.batches import resized
from faceage.serving.engines import graph_outputs, onnx_session
from faceage.serving.export import GRAPH_INFO
from faceage.training.setup import split_ids

QUANTISED_OPERATORS = ["Conv"]
CALIBRATION_BATCH = 32  # faces per calibration batch


@dataclass(frozen=True)
class QuantisationCheck:
    """The int8 graph against the float32 one on the checking faces."""

    calibration_faces: int
    checked_faces: int
    mae_float32: float
    mae_int8: float
    mean_age_change: float  # mean absolute difference between the two graphs' ages, years
    worst_age_change: float
    tolerance: float

    @property
    def mae_change(self) -> float:
        return self.mae_int8 - self.mae_float32

    @property
    def kept(self) -> bool:
        return abs(self.mae_change) < self.tolerance


def validation_chips(chip_size: int, paths: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's validation faces (``paths`` as :func:`~faceage.stage.pipeline_paths` names them) as a graph
    takes them (float32 NCHW in [0, 1], resized to ``chip_size`` as evaluation resizes), in manifest order, and
    their ages."""
    if not (paths["split"].is_file() and paths["ingested"].is_dir()):
        raise FaceageError(
            f"--int8 calibrates on the pipeline's validation faces: no {paths['split']} here (dvc repro)"
        )
    ids = np.sort(split_ids(pd.read_csv(paths["split"]), "val"))
    faces = torch.from_numpy(np.ascontiguousarray(load_images(paths["ingested"])[ids])).permute(0, 3, 1, 2)
    chips = resized(faces.float().div_(255), chip_size).numpy()
    return np.ascontiguousarray(chips), load_manifest(paths["ingested"])["age"].to_numpy(float)[ids]


def graph_ages(graph: Path, chips: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """The ages the ONNX graph at ``graph`` gives float32 NCHW ``chips``, through ONNX Runtime."""
    batches = (chips[i : i + batch_size] for i in range(0, len(chips), batch_size))
    return graph_outputs(onnx_session(graph), batches)["age"]


def quantise(
    graph: Path, output: Path, calibration: np.ndarray, checking: np.ndarray, ages: np.ndarray, tolerance: float
) -> QuantisationCheck:
    """Quantise ``graph`` calibrated on the ``calibration`` chips (float32 NCHW in [0, 1], the graph's input) and
    compare it with ``graph`` on the ``checking`` chips, whose true ``ages`` are given; write it at ``output``
    (with ``graph``'s description, marked int8) only when kept."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (
                {"chips": calibration[i : i + CALIBRATION_BATCH]} for i in range(0, len(calibration), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="faceage-int8-") as folder:
        prepared, quantised = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantised),
            Faces(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=QUANTISED_OPERATORS,
        )
        exact, approximate = graph_ages(graph, checking), graph_ages(quantised, checking)
        change = np.abs(approximate - exact)
        check = QuantisationCheck(
            len(calibration),
            len(checking),
            float(np.abs(exact - ages).mean()),
            float(np.abs(approximate - ages).mean()),
            float(change.mean()),
            float(change.max()),
            tolerance,
        )
        if check.kept:
            described = onnx.load_model(str(quantised))
            info = json.loads(dict((p.key, p.value) for p in onnx.load_model(str(graph)).metadata_props)[GRAPH_INFO])
            del described.metadata_props[:]
            onnx.helper.set_model_props(described, {GRAPH_INFO: json.dumps({**info, "int8": True})})  # a GraphInfo
            output.parent.mkdir(parents=True, exist_ok=True)
            onnx.save_model(described, str(output))
    return check


def summary_line(check: QuantisationCheck) -> str:
    """The check in one line."""
    return (
        f"int8 on {check.checked_faces} validation faces (calibrated on {check.calibration_faces} others): MAE "
        f"{check.mae_float32:.3f} -> {check.mae_int8:.3f} years ({check.mae_change:+.3f}, limit +/-{check.tolerance}); "
        f"ages move by {check.mean_age_change:.3f} on average, {check.worst_age_change:.2f} at most"
    )


def refused(check: QuantisationCheck, output: Path) -> FaceageError:
    """The one-line error of an int8 graph not kept."""
    return FaceageError(f"{summary_line(check)}: over the limit, {output} not written; keep the float32 graph")
