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
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import ASTRONAUT, ASTRONAUT_FACE, settings

from faceage.sections import FacesParams
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
    """What ``faceage predict`` says of each face: the ages, intervals and decisions at 18 to match."""
    estimator = AgeEstimator(model_path)
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
    assert (rows["input"] == 0).sum() == 1 and tuple(face[["left", "top", "right", "bottom"]]) == ASTRONAUT_FACE
    assert_same_answer(face, expected_faces(tiny_model, ASTRONAUT.read_bytes(), False)[0])
    assert broken["face"] == -1 and broken["error"].startswith("not an image")
    assert_same_answer(crop, expected_faces(tiny_model, chip.read_bytes(), True)[0])


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


def test_served_champion_answers_invocations_with_an_image(champion, tiny_model, tmp_path):
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "models", "serve", "-m", "models:/faceage@champion", "--env-manager", "local"]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=isolated_env(champion["uri"]),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, 180)
        image = base64.b64encode(ASTRONAUT.read_bytes()).decode()
        payload = {"dataframe_split": {"columns": ["image"], "data": [[image]]}, "params": {"over": 18}}
        body = json.dumps(payload).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read().decode()
        (row,) = json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))["predictions"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()
    assert [row["left"], row["top"], row["right"], row["bottom"]] == list(ASTRONAUT_FACE) and row["error"] is None
    assert_same_answer(row, expected_faces(tiny_model, ASTRONAUT.read_bytes(), False)[0])


def test_registered_version_is_the_runs_logged_model(champion):
    from mlflow import MlflowClient

    client = MlflowClient(champion["uri"])
    version = client.get_model_version_by_alias("faceage", "champion")
    assert str(version.version) == champion["version"] and version.run_id == champion["run_id"]
    assert version.description == CARD
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.name == MODEL_IN_RUN and logged.source_run_id == champion["run_id"]
