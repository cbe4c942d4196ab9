"""Export the age network as ONNX or TorchScript, for use without this package (an ONNX graph also carries what
``faceage predict`` needs to run it through ONNX Runtime: see :mod:`faceage.serving.engines`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from faceage.errors import FaceageError
from faceage.model.age_model import AgeModel
from faceage.model.batches import IMAGENET_MEAN, IMAGENET_STD
from faceage.model.checkpoint import Checkpoint, load_model

if TYPE_CHECKING:  # imported when a graph is written or read
    import onnx

EXAMPLE_BATCH = 2
OPSET = 18
EXPORTED = ("age", "age_low", "age_high", "female_probability")  # the graph's outputs, where the model has them
GRAPH_INFO = "faceage"  # the ONNX metadata key of the model's description (JSON, a GraphInfo)
QUIET_LOGGERS = ("torch.onnx", "onnx_ir", "onnxscript")  # the exporter's passes: a line per pass, at INFO


class ExportableModel(nn.Module):
    """RGB chips in ``[0, 1]`` at the model's chip size (``data.image_size`` at training) to ages in years, their
    calibrated intervals (when the model has them) and the probability of female (with a gender head).

    The ImageNet normalisation, the resizing to each network's input size, the read-out of the age head and the
    calibration are part of the graph; with
    ``flip``, so is the averaging of each face's prediction with its mirror image's.
    """

    def __init__(self, model: AgeModel, flip: bool):
        super().__init__()
        self.model = model
        self.flip = flip
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, chips: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.model((chips - self.mean) / self.std, flip=self.flip)
        return {name: outputs[name] for name in EXPORTED if name in outputs}


def exportable(model_path: str | Path, flip: bool | None = None) -> tuple[ExportableModel, Checkpoint]:
    """The checkpoint's model wrapped for export, in float32 on the CPU, and the checkpoint; ``flip`` by default as
    the model's intervals were calibrated (:attr:`~faceage.model.age_model.AgeModel.calibrated_flip`)."""
    model, checkpoint = load_model(model_path, torch.device("cpu"))
    model.requires_grad_(False)
    flip = model.calibrated_flip if flip is None else flip
    wrapped = ExportableModel(model.to(memory_format=torch.contiguous_format), flip)
    return wrapped.eval(), checkpoint


@dataclass(frozen=True)
class GraphInfo:
    """What running the graph on photos needs besides its weights: the chip size faces are cut at, whether
    mirror-image averaging is in the graph, the intervals' level, the face settings, and what the model learnt
    from (and in which MLflow run)."""

    chip_size: int
    flip: bool
    level: float | None
    faces: dict | None
    dataset: dict | None
    run_id: str | None
    int8: bool = False  # its convolutions quantised (faceage export --int8)
    checkpoint_sha256: str | None = None  # of the checkpoint file it was exported from (graphs written before: none)


def graph_info(model: AgeModel, checkpoint: Checkpoint, flip: bool, model_path: Path) -> GraphInfo:
    """The :class:`GraphInfo` of the checkpoint's model, read from ``model_path``, exported with or without
    ``flip``."""
    level = model.calibration.level if model.calibration else None
    faces = dataclasses.asdict(checkpoint.faces) if checkpoint.faces else None
    digest = file_sha256(model_path)
    return GraphInfo(model.image_size, flip, level, faces, checkpoint.dataset, checkpoint.run_id, False, digest)


def write_graph_info(graph: onnx.ModelProto, info: GraphInfo) -> None:
    """Set ``info`` as the description of ``graph`` (what :func:`read_graph_info` reads)."""
    import onnx

    onnx.helper.set_model_props(graph, {GRAPH_INFO: json.dumps(dataclasses.asdict(info))})


def read_graph_info(path: Path) -> GraphInfo:
    """The description ``faceage export`` wrote into the graph at ``path``."""
    import onnx

    try:
        graph = onnx.load_model(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises its own types for damaged files
        raise FaceageError(f"{path} is not an ONNX graph ({type(error).__name__}): run dvc repro") from None
    return graph_description({p.key: p.value for p in graph.metadata_props}.get(GRAPH_INFO), path)


def graph_description(text: str | None, path: str | Path) -> GraphInfo:
    """The graph's :class:`GraphInfo`, read from its metadata text; one line when it is missing or not what
    ``faceage export`` writes."""
    if text is None:
        raise FaceageError(f"{path} has no faceage description: write it with faceage export --format onnx")
    try:
        info = GraphInfo(**json.loads(text))
        valid = isinstance(info.chip_size, int) and isinstance(info.flip, bool) and isinstance(info.int8, bool)
    except (json.JSONDecodeError, TypeError):  # not JSON, not an object, or keys missing or unknown
        valid = False
    if not valid:
        raise FaceageError(f"{path}: its faceage description is damaged: export it again with faceage export")
    return info


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, in hex."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def export_model(model_path: str | Path, output: str | Path, fmt: str, flip: bool | None = None) -> int:
    """Write the network of ``model_path`` to ``output`` as ``onnx`` or ``torchscript`` (``flip`` as for
    :func:`exportable`); return its chip size."""
    wrapped, checkpoint = exportable(model_path, flip)
    size = wrapped.model.image_size
    example = torch.rand(EXAMPLE_BATCH, 3, size, size)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        torch.jit.trace(wrapped, example, strict=False).save(str(output))
    elif fmt == "onnx":
        import onnx

        names = list(wrapped(example))
        batch = torch.export.Dim("batch", min=1)
        for exporter in QUIET_LOGGERS:
            logging.getLogger(exporter).setLevel(logging.WARNING)
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            input_names=["chips"],
            output_names=names,
            dynamic_shapes={"chips": {0: batch}},
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
        graph = program.model_proto
        info = graph_info(wrapped.model, checkpoint, wrapped.flip, Path(model_path))
        write_graph_info(graph, info)
        onnx.save_model(graph, str(output))
    else:
        raise FaceageError(f"unknown export format {fmt!r}; choose onnx or torchscript")
    return size
