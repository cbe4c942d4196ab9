"""What runs a model's networks on face chips: PyTorch on a checkpoint's model, or ONNX Runtime on a graph
written by ``faceage export --format onnx`` (the same outputs, often faster on a CPU)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from faceage.errors import FaceageError
from faceage.model.age_model import AgeModel
from faceage.model.checkpoint import describe
from faceage.model.inference import predict
from faceage.runtime import cpu_autocast, native_cpu_bf16
from faceage.serving.export import GRAPH_INFO, graph_description

if TYPE_CHECKING:  # imported when a graph is run
    import onnxruntime


class TorchEngine:
    """An :class:`AgeModel` run by PyTorch on ``device``; on the CPU under bfloat16 autocast with ``bf16`` (by
    default where the CPU computes bfloat16 natively: there it is about twice as fast, and the benchmark measures
    what it changes of the MAE; elsewhere it is emulated, several times slower)."""

    def __init__(self, model: AgeModel, device: torch.device, bf16: bool | None = None):
        self.model = model
        self.device = device
        self.set_precision(bf16)

    def set_precision(self, bf16: bool | None) -> None:
        """bfloat16 autocast with ``bf16``, on the CPU only; ``None``: where the CPU computes bfloat16 natively."""
        self.bf16 = self.device.type == "cpu" and (native_cpu_bf16() if bf16 is None else bf16)

    @property
    def chip_size(self) -> int:
        return self.model.image_size

    @property
    def level(self) -> float | None:
        return self.model.calibration.level if self.model.calibration else None

    @property
    def flip(self) -> bool:
        """Whether ages are averaged with the mirror images' unless told otherwise: as the intervals were calibrated."""
        return self.model.calibrated_flip

    @property
    def precision(self) -> str:
        return "bfloat16 autocast" if self.bf16 else "float32"

    def outputs(self, chips: np.ndarray, flip: bool, batch_size: int) -> dict[str, np.ndarray]:
        """The model's outputs for ``(N, chip_size, chip_size, 3)`` uint8 chips; ``flip``: mirror-image averaging."""
        amp = cpu_autocast() if self.bf16 else None
        return predict(self.model, chips, np.arange(len(chips)), batch_size, self.device, amp, flip)


class OnnxEngine:
    """An exported graph run by ONNX Runtime on the CPU (one thread per physical core). The graph's description
    (:class:`~faceage.serving.export.GraphInfo`) says how its chips are cut and whether mirror-image averaging is
    built in."""

    def __init__(self, path: str | Path):
        self.session = onnx_session(path)
        self.info = graph_description(self.session.get_modelmeta().custom_metadata_map.get(GRAPH_INFO), path)

    @property
    def chip_size(self) -> int:
        return self.info.chip_size

    @property
    def level(self) -> float | None:
        return self.info.level

    @property
    def flip(self) -> bool:
        """Whether mirror-image averaging is built into the graph."""
        return self.info.flip

    @property
    def precision(self) -> str:
        return "int8" if self.info.int8 else "float32"

    def outputs(self, chips: np.ndarray, flip: bool, batch_size: int) -> dict[str, np.ndarray]:
        """As :meth:`TorchEngine.outputs`; ``flip`` must be what the graph was exported with."""
        check_flip(self.info.flip, flip)
        batches = (
            np.ascontiguousarray(chips[start : start + batch_size].transpose(0, 3, 1, 2), dtype=np.float32) / 255
            for start in range(0, len(chips), batch_size)
        )
        return graph_outputs(self.session, batches)


def onnx_session(path: str | Path) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session of the graph at ``path`` on the CPU; one line when it cannot be run."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        # Threads that spin between runs take the cores from the face-finding processes beside them: end to end
        # 36.1 against 33.3 photos/s, batches 137 against 140 faces/s (benchmarks.photos, benchmarks.engines).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for unreadable or invalid graphs
        raise FaceageError(f"{path} is not an ONNX graph ONNX Runtime can run ({describe(error)})") from None


def graph_outputs(session: onnxruntime.InferenceSession, batches: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Each output of the graph ``session`` runs, over ``batches`` of float32 NCHW chips in [0, 1], concatenated."""
    names = [output.name for output in session.get_outputs()]
    results: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for x in batches:
        for name, values in zip(names, session.run(None, {"chips": x}), strict=True):
            results[name].append(values)
    return {name: np.concatenate(values).astype(np.float64) for name, values in results.items()}


def check_flip(in_graph: bool, flip: bool) -> None:
    """One line when mirror-image averaging is asked of a graph exported without it, or the reverse."""
    if in_graph and not flip:
        raise FaceageError(
            "the ONNX graph has mirror-image averaging built in: drop --no-flip, or export with --no-flip"
        )
    if flip and not in_graph:
        raise FaceageError(
            "the ONNX graph was exported without mirror-image averaging: drop --flip, or export with --flip"
        )
