"""The graph ``faceage predict`` and ``faceage serve`` run when no model is named: the pipeline's checkpoint in
ONNX, written by the export stage with its convolutions in int8 where that keeps the validation MAE. ONNX Runtime
runs it faster than PyTorch runs the checkpoint, several times so on one image (docs/predicting.md)."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from faceage.report_sections import ExportParams
from faceage.serving.export import export_model, file_sha256, read_graph_info
from faceage.serving.quantize import quantise_on_validation, summary_line


def write_default_graph(checkpoint: Path, output: Path, params: ExportParams, paths: dict[str, Path]) -> dict:
    """Export ``checkpoint`` to ``output`` in ONNX, in int8 with ``params.int8`` where that keeps the validation
    MAE within ``params.int8_tolerance`` (``paths`` as :func:`~faceage.stage.pipeline_paths` names them); return
    what was written and why, JSON-ready."""
    with tempfile.TemporaryDirectory(prefix="faceage-export-") as folder:
        graph = Path(folder) / "model.onnx"
        chip_size = export_model(checkpoint, graph, "onnx")
        check = None
        if params.int8:
            quantised = Path(folder) / "model.int8.onnx"
            check = quantise_on_validation(
                graph, quantised, chip_size, params.calibration_faces, params.int8_tolerance, paths
            )
        kept = check is not None and check.kept
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(quantised if kept else graph, output)
    return {
        "graph": str(output),
        "precision": "int8" if kept else "float32",
        "int8": None if check is None else {**dataclasses.asdict(check), "kept": kept, "summary": summary_line(check)},
    }


def default_model(paths: dict[str, Path], flip: bool | None, bf16: bool | None) -> tuple[Path, str | None]:
    """The model predict and serve run when none is named (``paths`` as :func:`~faceage.stage.pipeline_paths`
    names them), and a note for the user when it is the checkpoint for a reason they did not ask for: the
    pipeline's graph, unless what was asked needs the checkpoint (``bf16``, or ``flip`` other than the graph's), the
    export stage has not written it, or it was exported from another checkpoint than the one there now."""
    graph, checkpoint = paths["graph"], paths["model"]
    if bf16:
        return checkpoint, None
    if not graph.is_file():
        return checkpoint, f"no {graph} (the export stage writes it: dvc repro): the checkpoint runs, on PyTorch"
    info = read_graph_info(graph)
    if flip is not None and flip != info.flip:
        return checkpoint, None
    if checkpoint.is_file() and info.checkpoint_sha256 != file_sha256(checkpoint):
        return checkpoint, f"{graph} was exported from another checkpoint (dvc repro): {checkpoint} runs, on PyTorch"
    return graph, None
