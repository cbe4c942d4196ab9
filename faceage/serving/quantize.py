"""Static int8 quantisation of an exported ONNX graph: calibrated on validation faces, checked on the other
validation faces, and written only when their MAE moves by less than a tolerance.

Only the convolutions are quantised (weights per channel, activations per tensor, QDQ): the heads, the age
read-out and the calibration stay in float32. Quantising every operator moved a UTKFace student's ages four times
as much (0.68 against 0.16 years on average) for 1.3 times the speed. In a graph of several networks (an ensemble)
whose every convolution in int8 moves the MAE past the tolerance, each network is tried alone, and those that keep
within it are quantised together: one network that int8 does not suit leaves the others their speed."""

from __future__ import annotations

import ast
import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from faceage.data.manifest import load_images, load_manifest
from faceage.errors import FaceageError
from faceage.model.batches import resized
from faceage.serving.engines import graph_outputs, onnx_session
from faceage.serving.export import read_graph_info, write_graph_info
from faceage.training.setup import split_ids

if TYPE_CHECKING:  # imported when a graph is quantised
    import onnx

QUANTISED_OPERATORS = ["Conv"]
CALIBRATION_BATCH = 32  # faces per calibration batch
NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # where the exporter records the modules a node comes from
NETWORK_SCOPES = ("model.networks.", "model.reference")  # the modules that are networks of an AgeModel


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
    networks: tuple[str, ...]  # the networks whose convolutions are in int8, as the graph names them
    of_networks: int

    @property
    def mae_change(self) -> float:
        return self.mae_int8 - self.mae_float32

    @property
    def kept(self) -> bool:
        return abs(self.mae_change) < self.tolerance


def pipeline_chips(chip_size: int, paths: dict[str, Path], split: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """The faces of the pipeline's ``split`` (``paths`` as :func:`~faceage.stage.pipeline_paths` names them) as a
    graph takes them (float32 NCHW in [0, 1], resized to ``chip_size`` as evaluation resizes), in manifest order,
    and their ages."""
    if not (paths["split"].is_file() and paths["ingested"].is_dir()):
        raise FaceageError(
            f"--int8 calibrates on the pipeline's validation faces: no {paths['split']} here (dvc repro)"
        )
    ids = np.sort(split_ids(pd.read_csv(paths["split"]), split))
    faces = torch.from_numpy(np.ascontiguousarray(load_images(paths["ingested"])[ids])).permute(0, 3, 1, 2)
    chips = resized(faces.float().div_(255), chip_size).numpy()
    return np.ascontiguousarray(chips), load_manifest(paths["ingested"])["age"].to_numpy(float)[ids]


def graph_ages(graph: Path, chips: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """The ages the ONNX graph at ``graph`` gives float32 NCHW ``chips``, through ONNX Runtime."""
    batches = (chips[i : i + batch_size] for i in range(0, len(chips), batch_size))
    return graph_outputs(onnx_session(graph), batches)["age"]


def conv_networks(graph: onnx.ModelProto) -> dict[str, list[str]]:
    """The names of the graph's convolutions by the network they belong to: the module the exporter records for
    each (``model.networks.0``, ``model.reference``), or ``""`` where it records none."""
    networks: dict[str, list[str]] = {}
    for node in graph.graph.node:
        if node.op_type in QUANTISED_OPERATORS:
            scopes = {p.key: p.value for p in node.metadata_props}.get(NAME_SCOPES)
            network = ast.literal_eval(scopes)[2] if scopes else ""
            networks.setdefault(network if network.startswith(NETWORK_SCOPES) else "", []).append(node.name)
    return networks


def chosen_networks(
    networks: Sequence[str], check: Callable[[tuple[str, ...]], QuantisationCheck]
) -> QuantisationCheck:
    """The check of quantising every one of ``networks``; where that is over the tolerance and there are several,
    the check of quantising together those that keep within it alone (or the first check, if none does)."""
    every = check(tuple(networks))
    if every.kept or len(networks) < 2:
        return every
    keeping = tuple(network for network in networks if check((network,)).kept)
    return check(keeping) if keeping else every


def quantise(
    graph: Path, output: Path, calibration: np.ndarray, checking: np.ndarray, ages: np.ndarray, tolerance: float
) -> QuantisationCheck:
    """Quantise ``graph``'s convolutions (of every network, or of those :func:`chosen_networks` keeps) calibrated
    on the ``calibration`` chips (float32 NCHW in [0, 1], the graph's input) and compare it with ``graph`` on the
    ``checking`` chips, whose true ``ages`` are given; write it at ``output`` (with ``graph``'s description,
    marked int8) only when kept."""
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
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
        networks = conv_networks(onnx.load_model(str(prepared)))
        exact = graph_ages(graph, checking)
        written: dict[tuple[str, ...], tuple[QuantisationCheck, Path]] = {}

        def check(chosen: tuple[str, ...]) -> QuantisationCheck:
            if chosen not in written:
                quantised = Path(folder) / f"int8-{len(written)}.onnx"
                quantize_static(
                    str(prepared),
                    str(quantised),
                    Faces(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=QUANTISED_OPERATORS,
                    nodes_to_quantize=[name for network in chosen for name in networks[network]],
                )
                approximate = graph_ages(quantised, checking)
                change = np.abs(approximate - exact)
                result = QuantisationCheck(
                    len(calibration),
                    len(checking),
                    float(np.abs(exact - ages).mean()),
                    float(np.abs(approximate - ages).mean()),
                    float(change.mean()),
                    float(change.max()),
                    tolerance,
                    chosen,
                    len(networks),
                )
                written[chosen] = result, quantised
            return written[chosen][0]

        result = chosen_networks(list(networks), check)
        if result.kept:
            described = onnx.load_model(str(written[result.networks][1]))
            del described.metadata_props[:]
            write_graph_info(described, dataclasses.replace(read_graph_info(graph), int8=True))
            output.parent.mkdir(parents=True, exist_ok=True)
            onnx.save_model(described, str(output))
    return result


def quantise_on_validation(
    graph: Path, output: Path, chip_size: int, calibration_faces: int, tolerance: float, paths: dict[str, Path]
) -> QuantisationCheck:
    """:func:`quantise` ``graph`` calibrated on the pipeline's first ``calibration_faces`` validation faces (at most
    half of them) and checked on the others (``paths`` as :func:`~faceage.stage.pipeline_paths` names them)."""
    chips, ages = pipeline_chips(chip_size, paths)
    count = min(calibration_faces, len(chips) // 2)
    if count < 1:
        raise FaceageError(f"int8 is calibrated and checked on validation faces: the split has {len(chips)}")
    return quantise(graph, output, chips[:count], chips[count:], ages[count:], tolerance)


def quantised_part(check: QuantisationCheck) -> str:
    """Which convolutions the check's graph has in int8, in a few words."""
    if check.of_networks < 2:
        return "convolutions"
    if len(check.networks) == check.of_networks:
        return f"convolutions of all {check.of_networks} networks"
    names = ", ".join(network.removeprefix("model.") for network in check.networks)
    return f"convolutions of {names}: {len(check.networks)} of {check.of_networks} networks"


def summary_line(check: QuantisationCheck) -> str:
    """The check in one line."""
    return (
        f"int8 ({quantised_part(check)}) on {check.checked_faces} validation faces (calibrated on "
        f"{check.calibration_faces} others): MAE {check.mae_float32:.3f} -> {check.mae_int8:.3f} years "
        f"({check.mae_change:+.3f}, limit +/-{check.tolerance}); ages move by {check.mean_age_change:.3f} on average, "
        f"{check.worst_age_change:.2f} at most"
    )


def refused(check: QuantisationCheck, output: Path) -> FaceageError:
    """The one-line error of an int8 graph not kept."""
    return FaceageError(f"{summary_line(check)}: over the limit, {output} not written; keep the float32 graph")
