"""The logged MLflow model: registered as champion, loaded in a fresh process outside the repository, served."""

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import ASTRONAUT, assert_predict_leaves_no_download, huge_png, is_her_box, settings

from faceage.cli import main
from faceage.errors import FaceageError
from faceage.sections import FacesParams
from faceage.serving import pyfunc
from faceage.serving.loading import load_any
from faceage.serving.photos import AgeEstimator, find_faces
from faceage.serving.pyfunc import example_input, log_age_model
from faceage.tracking.registry import MODEL_IN_RUN, RUN_DESCRIPTION_TAG, register_with_alias
from faceage.tracking.runs import RunTracker

pytestmark = pytest.mark.slow  # MLflow models loaded in fresh processes, a served model: seconds each
DATASET = {"name": "noise faces", "kind": "real"}
LOAD_AND_PREDICT = """
import json, sys, mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/faceage@champion")
images = [open(sys.argv[1], "rb").read(), b"not an image", open(sys.argv[2], "rb").read()]
frame = pd.DataFrame({"image": images, "aligned": [False, False, True]})
print(model.predict(frame, params={"over": 18}).to_json(orient="records"))
"""
CARD = "# Model card\n\nWhat the tiny model is for."
ENGINE_CONFIGS = {"default": None, "pytorch": {"engine": "pytorch"}}  # model_config at load time


@pytest.fixture(scope="module")
def champion(tiny_model, tmp_path_factory) -> dict:
    """A tracking store whose registered model ``faceage`` has the tiny model's run as ``champion``."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = RunTracker("serving", run_name="tiny", uri=uri)
    log_age_model(tracker, tiny_model, settings(FacesParams), np.zeros((32, 32, 3), np.uint8), DATASET)
    tracker.set_tags({RUN_DESCRIPTION_TAG: CARD})  # as the evaluate stage does
    tracker.finish()
    version = register_with_alias(tracker.run_id, "faceage", "champion", uri)
    return {"uri": uri, "version": version, "run_id": tracker.run_id, "folder": folder}


def expected_faces(model_path: Path, data: bytes, aligned: bool) -> list[dict]:
    """What ``faceage predict`` says of each face in float32 (as the logged model's graph runs): the ages,
    intervals and decisions at 18 to match."""
    estimator = AgeEstimator(model_path, bf16=False)
    photo = find_faces("x", data, estimator.chip_size, estimator.faces, aligned)
    return estimator.results([photo], over=18)[0]["faces"]


def assert_same_answer(row: pd.Series | dict, face: dict) -> None:
    for name in ("age_years", "age_low", "age_high"):
        assert row[name] == pytest.approx(face[name], abs=0.01), name
    assert row["age_low"] < row["age_years"] < row["age_high"]
    assert row["interval"] == face["interval"] and row["over"] == face["over"]


def isolated_env(uri: str) -> dict:
    """The environment of a user outside this repository, with this environment's tools on the PATH and only
    the tracking store set."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "PATH": path, "MLFLOW_TRACKING_URI": uri}


def test_champion_loads_and_predicts_in_a_fresh_process_outside_the_repository(champion, tiny_model, tmp_path):
    chip = tmp_path / "chip.png"
    chip.write_bytes(example_input(np.full((40, 40, 3), 120, np.uint8))["image"][0])
    command = [sys.executable, "-c", LOAD_AND_PREDICT, str(ASTRONAUT), str(chip)]
    result = subprocess.run(command, cwd=tmp_path, env=isolated_env(champion["uri"]), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = pd.DataFrame(json.loads(result.stdout.strip().splitlines()[-1]))
    face, broken, crop = (rows[rows["input"] == i].iloc[0] for i in range(3))
    assert (rows["input"] == 0).sum() == 1 and is_her_box(tuple(face[["left", "top", "right", "bottom"]]))
    assert_same_answer(face, expected_faces(tiny_model, ASTRONAUT.read_bytes(), False)[0])
    assert broken["face"] == -1 and broken["error"].startswith("not an image")
    assert_same_answer(crop, expected_faces(tiny_model, chip.read_bytes(), True)[0])


def test_predict_and_the_page_load_the_registered_model_by_its_uri(champion, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["uri"])
    loaded = load_any("models:/faceage@champion")
    assert loaded.run_id == champion["run_id"] and loaded.name == "models:/faceage@champion"
    found = find_faces("x", ASTRONAUT.read_bytes(), loaded.estimator.chip_size, loaded.estimator.faces)
    assert_same_answer(
        loaded.estimator.results([found], over=18)[0]["faces"][0],
        expected_faces(tiny_model, ASTRONAUT.read_bytes(), False)[0],
    )
    assert main(["predict", str(ASTRONAUT), "--model", "models:/faceage@champion", "--json", "--over", "18"]) == 0
    (face,) = json.loads(capsys.readouterr().out)["results"][0]["faces"]
    assert_same_answer(face, expected_faces(tiny_model, ASTRONAUT.read_bytes(), False)[0])
    assert main(["predict", str(ASTRONAUT), "--model", "models:/faceage@nobody"]) == 1
    assert "error: cannot load the MLflow model models:/faceage@nobody: " in capsys.readouterr().err


class NotFaceage(mlflow.pyfunc.PythonModel):
    """An MLflow model of someone else's: it gives back what it is given."""

    def predict(self, context, model_input, params=None):
        return model_input


def test_an_mlflow_model_that_is_not_faceages_is_one_line(tmp_path, monkeypatch, capsys):
    uri, before = f"sqlite:///{tmp_path / 'mlflow.db'}", mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("others", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.pyfunc.log_model(name="model", python_model=NotFaceage())
        model = f"runs:/{run.info.run_id}/model"
        capsys.readouterr()
        assert main(["predict", str(ASTRONAUT), "--model", model]) == 1
    finally:
        mlflow.set_tracking_uri(before)
    err = capsys.readouterr().err  # after MLflow's download progress bar
    assert err.strip().splitlines()[-1] == f"error: {model} is not a faceage model" and "Traceback" not in err


def test_predicting_with_a_logged_model_leaves_no_download_behind(champion, tmp_path):
    model = f"runs:/{champion['run_id']}/{MODEL_IN_RUN}"  # MLflow copies it out of the store to load it
    assert_predict_leaves_no_download(model, isolated_env(champion["uri"]), tmp_path)


def test_the_logged_model_runs_its_onnx_graph_unless_told_to_run_the_checkpoint(champion, monkeypatch):
    mlflow.set_tracking_uri(champion["uri"])
    uri, rng = "models:/faceage@champion", np.random.default_rng(5)
    loaded = {name: mlflow.pyfunc.load_model(uri, model_config=config) for name, config in ENGINE_CONFIGS.items()}
    engines = {name: type(model.unwrap_python_model().estimator.engine).__name__ for name, model in loaded.items()}
    assert engines == {"default": "OnnxEngine", "pytorch": "TorchEngine"}
    loaded["pytorch"].unwrap_python_model().estimator.engine.set_precision(False)  # the graph runs in float32
    crops = [example_input(rng.integers(0, 256, (side, side, 3), np.uint8))["image"][0] for side in (20, 32, 47, 128)]
    frame = pd.DataFrame({"image": [ASTRONAUT.read_bytes(), *crops], "aligned": [False] + [True] * len(crops)})
    graph, checkpoint = (loaded[name].predict(frame, params={"over": 18}) for name in ENGINE_CONFIGS)
    assert graph[["input", "left", "top", "right", "bottom"]].equals(
        checkpoint[["input", "left", "top", "right", "bottom"]]
    )
    for column in ("age_years", "age_low", "age_high", "female_probability"):
        np.testing.assert_allclose(graph[column].astype(float), checkpoint[column].astype(float), atol=0.01)
    assert list(graph["over"]) == list(checkpoint["over"]) and len(graph) == 5
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion["uri"])
    for flip, engine in ((None, "OnnxEngine"), (True, "OnnxEngine"), (False, "TorchEngine")):  # the graph mirrors
        estimator = load_any(uri, flip=flip).estimator
        assert (type(estimator.engine).__name__, estimator.flip) == (engine, flip is not False)
    for bf16, engine in ((True, "TorchEngine"), (False, "OnnxEngine")):  # the graph runs in float32
        estimator = load_any(uri, bf16=bf16).estimator
        assert (type(estimator.engine).__name__, estimator.engine.precision) == (
            engine,
            "bfloat16 autocast" if bf16 else "float32",
        )
    expected = r"model_config engine: 'tensorrt' is not offered by this model; expected \['onnxruntime', 'pytorch'\]"
    with pytest.raises(FaceageError, match=expected):
        mlflow.pyfunc.load_model(uri, model_config={"engine": "tensorrt"})


def test_a_model_whose_graph_cannot_be_exported_is_logged_on_pytorch(tiny_model, tmp_path, monkeypatch, caplog):
    def unexportable(*args, **kwargs):
        raise RuntimeError("an operator ONNX lacks")

    monkeypatch.setattr(pyfunc, "export_model", unexportable)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker("serving", run_name="no graph", uri=uri)
    log_age_model(tracker, tiny_model, settings(FacesParams), np.zeros((32, 32, 3), np.uint8), DATASET)
    assert tracker.active  # tracking goes on
    tracker.finish()
    assert "model is logged without its ONNX graph (it runs on PyTorch): an operator ONNX lacks" in caplog.text
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model(f"runs:/{tracker.run_id}/{MODEL_IN_RUN}")
    assert type(loaded.unwrap_python_model().estimator.engine).__name__ == "TorchEngine"
    assert loaded.predict(pd.DataFrame({"image": [ASTRONAUT.read_bytes()]}))["error"].isna().all()


def test_the_logged_model_says_what_it_learnt_from(champion):
    mlflow.set_tracking_uri(champion["uri"])
    assert mlflow.models.get_model_info("models:/faceage@champion").metadata["dataset"] == DATASET


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no answer from {url} within {seconds} s")


@pytest.fixture(scope="module")
def server(champion, tmp_path_factory) -> Iterator[dict]:
    """``mlflow models serve`` of the champion on a free loopback port: its URL and the processes it runs."""
    folder, port = tmp_path_factory.mktemp("served"), free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "models", "serve", "-m", "models:/faceage@champion", "--env-manager", "local"]
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder,
        env=isolated_env(champion["uri"]),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", process, 180)
        yield {"url": f"http://127.0.0.1:{port}/invocations", "session": process.pid}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()


def invoke(url: str, payload: dict) -> tuple[int, object]:
    """POST ``payload`` as JSON: the status and the decoded answer (NaN or Infinity in it fail the test)."""
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    return status, json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_served_champion_answers_invocations_with_an_image(server, tiny_model):
    photo = b64(ASTRONAUT.read_bytes())
    status, answer = invoke(server["url"], {**request_formats(photo)["dataframe_split"], "params": {"over": 18}})
    (row,) = answer["predictions"]
    assert status == 200 and row["error"] is None, row
    assert is_her_box((row["left"], row["top"], row["right"], row["bottom"]))
    assert_same_answer(row, expected_faces(tiny_model, ASTRONAUT.read_bytes(), False)[0])


def request_formats(image: str) -> dict[str, dict]:
    """The same one-photo request in each JSON format MLflow's scoring server documents."""
    return {
        "dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[image]]}},
        "dataframe_records": {"dataframe_records": [{"image": image}]},
        "instances": {"instances": [{"image": image}]},
        "inputs": {"inputs": {"image": [image]}},
    }


@pytest.mark.parametrize("form", list(request_formats("")))
def test_every_request_format_gets_the_same_answer(server, tiny_model, form):
    photo = b64(ASTRONAUT.read_bytes())
    status, answer = invoke(server["url"], {**request_formats(photo)[form], "params": {"over": 18}})
    (row,) = answer["predictions"]
    assert status == 200 and row["error"] is None, row
    assert_same_answer(row, expected_faces(tiny_model, ASTRONAUT.read_bytes(), False)[0])


WRONG_VALUES = {
    "aligned": ["false", "true", "yes", "", 1, 0, 1.5, [True], {"a": 1}],
    "image": [12, 1.5, True, "not base64!", "AAA", [1, 2]],
}


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, values in WRONG_VALUES.items() for v in values])
def test_a_value_of_the_wrong_type_is_refused_naming_its_field(server, field, value):
    row = {"image": b64(ASTRONAUT.read_bytes()), "aligned": False, field: value}
    status, answer = invoke(server["url"], {"dataframe_records": [row]})
    if status == 200:  # answered per row: an error that names the field, never an age
        (predicted,) = answer["predictions"]
        assert predicted["error"].startswith(f"{field}: ") and predicted["age_years"] is None, predicted
    else:  # refused whole by MLflow's schema check
        assert status == 400 and field in answer["message"], answer


@pytest.mark.parametrize("over", ["abc", "18", True, [18], {"age": 18}, float("inf"), -1, 1000])
def test_an_over_that_is_not_an_age_is_refused(server, over):
    payload = {**request_formats(b64(ASTRONAUT.read_bytes()))["dataframe_split"], "params": {"over": over}}
    status, answer = invoke(server["url"], payload)  # infinity as Python writes it: Infinity
    assert status == 400 and "over" in answer["message"], answer


def server_peak_mib(session: int) -> int:
    """The summed peak resident memory (VmHWM) of the server's processes, in MiB."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            if os.getsid(int(status.parent.name)) == session:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                total += int(fields["VmHWM"].split()[0]) // 1024
    return total


def test_a_burst_of_decompression_bombs_costs_little_and_the_server_goes_on_answering(server, tiny_model):
    before = server_peak_mib(server["session"])
    bomb = {"dataframe_split": {"columns": ["image"], "data": [[b64(huge_png(12000, 12000))]]}}
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: invoke(server["url"], bomb), range(20)))
    assert all(status == 200 for status, _ in answers)
    errors = {answer["predictions"][0]["error"] for _, answer in answers}
    assert errors == {"too large: 12000x12000 pixels is over the limit of 50 megapixels (faces.max_megapixels)"}
    assert server_peak_mib(server["session"]) - before < 100  # decoded, 12000x12000 RGB alone is 412 MiB
    test_served_champion_answers_invocations_with_an_image(server, tiny_model)


def test_rows_not_started_within_the_servers_time_limit_are_answered_as_such(champion, monkeypatch):
    mlflow.set_tracking_uri(champion["uri"])
    model = mlflow.pyfunc.load_model("models:/faceage@champion")
    frame = pd.DataFrame({"image": [ASTRONAUT.read_bytes()] * 3})
    assert model.predict(frame)["error"].isna().all()
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "0")
    answered = model.predict(frame)
    assert list(answered["error"]) == ["not processed: the request's time limit of 0 s ran out"] * 3


def test_registered_version_is_the_runs_logged_model(champion):
    from mlflow import MlflowClient

    client = MlflowClient(champion["uri"])
    version = client.get_model_version_by_alias("faceage", "champion")
    assert str(version.version) == champion["version"] and version.run_id == champion["run_id"]
    assert version.description == CARD
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.name == MODEL_IN_RUN and logged.source_run_id == champion["run_id"]
