"""The graph faceage predict and serve run when no model is named: the export stage writes it in int8 where int8
keeps the validation MAE, and predict runs it unless what was asked needs the checkpoint or it is out of date."""

import json
import shutil

import numpy as np
import pytest
from conftest import pipeline_folder, settings
from PIL import Image

from faceage.cli import main
from faceage.errors import FaceageError
from faceage.report_sections import ExportParams
from faceage.serving.default_graph import default_model, write_default_graph
from faceage.serving.export import file_sha256, read_graph_info
from faceage.stage import pipeline_paths

CHIP = 32  # the tiny model's chip size


@pytest.fixture
def pipeline(tiny_model, tmp_path, monkeypatch):
    """A pipeline folder with 40 validation faces and the tiny model as its checkpoint, as the current folder."""
    rng = np.random.default_rng(5)
    faces = rng.integers(0, 256, (80, CHIP, CHIP, 3), dtype=np.uint8)
    pipeline_folder(tmp_path, faces, rng.integers(1, 90, len(faces)))
    (tmp_path / "models").mkdir()
    shutil.copy(tiny_model, tmp_path / "models" / "model.pt")
    monkeypatch.chdir(tmp_path)
    return pipeline_paths()


@pytest.mark.parametrize(
    ("int8", "tolerance", "precision"), [(True, 150.0, "int8"), (True, 1e-9, "float32"), (False, 150.0, "float32")]
)
def test_the_export_stage_writes_int8_only_where_it_keeps_the_validation_mae(pipeline, int8, tolerance, precision):
    params = settings(ExportParams, int8=int8, calibration_faces=8, int8_tolerance=tolerance)
    report = write_default_graph(pipeline["model"], pipeline["graph"], params, pipeline)
    info = read_graph_info(pipeline["graph"])
    assert report["precision"] == precision and info.int8 == (precision == "int8")
    assert info.checkpoint_sha256 == file_sha256(pipeline["model"]) and info.chip_size == CHIP
    check = report["int8"]
    if int8:
        assert (check["calibration_faces"], check["checked_faces"], check["tolerance"]) == (8, 32, tolerance)
        assert check["kept"] == (abs(check["mae_int8"] - check["mae_float32"]) < tolerance) == (precision == "int8")
    else:
        assert check is None
    json.dumps(report)  # the stage writes it as it is


def test_predict_runs_the_pipelines_graph_unless_asked_for_what_only_the_checkpoint_does(pipeline, capsys):
    graph, checkpoint = pipeline["graph"], pipeline["model"]
    assert default_model(pipeline, None, None) == (
        checkpoint,
        f"no {graph} (the export stage writes it: dvc repro): the checkpoint runs, on PyTorch",
    )
    write_default_graph(checkpoint, graph, settings(ExportParams, calibration_faces=8), pipeline)
    flip = read_graph_info(graph).flip
    assert default_model(pipeline, None, None) == default_model(pipeline, flip, False) == (graph, None)
    assert default_model(pipeline, None, True) == default_model(pipeline, not flip, None) == (checkpoint, None)

    face = np.random.default_rng(1).integers(0, 256, (CHIP, CHIP, 3), dtype=np.uint8)
    Image.fromarray(face).save("face.png")
    assert main(["predict", "face.png", "--aligned", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == str(graph) and len(shown["results"][0]["faces"]) == 1

    # Retrained without exporting again: the graph is another model's, and the checkpoint runs with a note.
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    assert default_model(pipeline, None, None) == (
        checkpoint,
        f"{graph} was exported from another checkpoint (dvc repro): {checkpoint} runs, on PyTorch",
    )


@pytest.mark.parametrize("damage", [b"", b"not a graph", "truncated"])
def test_a_damaged_default_graph_is_one_line(pipeline, damage):
    write_default_graph(pipeline["model"], pipeline["graph"], settings(ExportParams, int8=False), pipeline)
    data = pipeline["graph"].read_bytes()
    pipeline["graph"].write_bytes(data[: len(data) // 3] if damage == "truncated" else damage)
    with pytest.raises(FaceageError, match=r"is not an ONNX graph|has no faceage description") as error:
        default_model(pipeline, None, None)
    assert "\n" not in str(error.value)
