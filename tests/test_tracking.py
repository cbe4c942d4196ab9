import logging
import subprocess
import sys
import time

import pytest
from conftest import settings
from mlflow import MlflowClient

from faceage.params import Params
from faceage.sections import MlflowParams, ModelParams
from faceage.tracking.runs import RunTracker, end_run, flatten
from faceage.tracking.store import finished_run_ids, finished_runs, tracking_uri, workspace_root
from faceage.tracking.training_runs import git_commit, start_pipeline_run, user_name


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_workspace_root_from_the_repository_and_a_subfolder(repo):
    (repo / "stages").mkdir()
    assert workspace_root(repo) == repo.resolve()
    assert workspace_root(repo / "stages") == repo.resolve()


def test_workspace_root_from_a_queued_experiment_copy(repo):
    queued = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    (queued / ".dvc").mkdir(parents=True)
    assert workspace_root(queued) == repo.resolve()
    assert tracking_uri(queued) == f"sqlite:///{repo.resolve() / 'mlflow.db'}"


def test_tracking_uri_honours_the_environment(repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(repo) == "http://tracking.example:5000"


def test_flatten_nested_parameters():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [2], "e": "x"}


def test_a_run_logs_params_metrics_tags_and_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker("exp", run_name="resnet18-x", tags={"backbone": "resnet18"}, uri=uri)
    assert tracker.active
    tracker.log_params({"model": {"backbone": "resnet18", "input_size": 64}})
    for epoch, mae in enumerate([9.0, 7.5], start=1):
        tracker.log_metrics({"val_mae": mae, "phase": "head"}, step=epoch)
    (tmp_path / "train.json").write_text("{}")
    tracker.log_artifact(tmp_path / "train.json", "metrics")
    tracker.finish()

    again = RunTracker("exp", run_id=tracker.run_id, uri=uri)
    again.log_metrics({"test_mae": 6.0})

    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "resnet18-x" and run.info.status == "FINISHED"
    assert run.data.tags["backbone"] == "resnet18"
    assert run.data.params == {"model.backbone": "resnet18", "model.input_size": "64"}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_mae")] == [9.0, 7.5]
    assert run.data.metrics["test_mae"] == 6.0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "metrics")] == ["metrics/train.json"]
    assert (tmp_path / "mlartifacts").is_dir()


def test_an_interrupted_run_is_reopened_without_logging_anything_twice(tmp_path, caplog, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    first = RunTracker("exp", uri=uri)
    first.log_params({"train": {"lr": 0.1, "epochs": 3}})
    for epoch in (1, 2):
        first.log_epoch({"epoch": epoch, "phase": "head", "val_mae": 10.0 - epoch})
    first.finish("FAILED")  # interrupted

    params = settings(Params, mlflow=settings(MlflowParams, experiment="exp"))
    again = start_pipeline_run(params, "data-a", "stages/train.py", run_id=first.run_id)
    assert again.run_id == first.run_id
    client = MlflowClient(uri)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    with caplog.at_level(logging.WARNING):
        again.log_params({"train": {"lr": 0.2, "epochs": 3, "seed": 1}})
    assert "keeps its logged values of train.lr" in caplog.text
    for epoch in (2, 3):  # epoch 2 was logged before the interruption
        again.log_epoch({"epoch": epoch, "phase": "finetune", "val_mae": 10.0 - epoch})
    again.finish()

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.1", "train.epochs": "3", "train.seed": "1"}
    history = client.get_metric_history(first.run_id, "val_mae")
    assert [(m.step, m.value) for m in history] == [(1, 9.0), (2, 8.0), (3, 7.0)]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_run_that_cannot_be_reopened_gives_way_to_a_new_one(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    gone = RunTracker("exp", uri=uri)
    MlflowClient(uri).delete_run(gone.run_id)
    with caplog.at_level(logging.WARNING):
        tracker = RunTracker("exp", run_id=gone.run_id, uri=uri)
    assert tracker.active and tracker.run_id != gone.run_id
    assert f"cannot reopen MLflow run {gone.run_id}" in caplog.text


def test_a_run_left_behind_is_ended(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    abandoned = RunTracker("exp", uri=uri)
    end_run(abandoned.run_id, "KILLED", uri)
    assert MlflowClient(uri).get_run(abandoned.run_id).info.status == "KILLED"
    with caplog.at_level(logging.WARNING):
        end_run("0" * 32, "KILLED", uri)
    assert "cannot end MLflow run" in caplog.text


def test_queued_experiment_runs_land_in_the_workspace_store(repo, monkeypatch):
    queued = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    (queued / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(queued)
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-kiln")
    params = settings(
        Params, model=settings(ModelParams, backbone="efficientnet_b0", pretrained=False, input_size=64), members={}
    )
    tracker = start_pipeline_run(params, "abc123", "stages/train.py")
    tracker.log_dataset("UTKFace.tar.gz", "abc123", "data/UTKFace.tar.gz", 120)
    tracker.finish()
    assert (repo / "mlflow.db").is_file() and not (queued / "mlflow.db").exists()
    run = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(tracker.run_id)
    assert run.info.run_name == "efficientnet_b0-classification-tidy-kiln"
    tags = run.data.tags
    assert tags["dataset_fingerprint"] == "abc123" and tags["dvc_experiment"] == "tidy-kiln"
    assert tags["mlflow.source.name"] == "stages/train.py" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == git_commit()
    assert tags["mlflow.note.content"].startswith("efficientnet_b0 with a classification head, from scratch, 64 px")
    assert tags["mlflow.note.content"].endswith("on data abc123; DVC experiment tidy-kiln")
    (used,) = run.inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.digest, used.dataset.source) == (
        "UTKFace.tar.gz",
        "abc123",
        '{"uri": "data/UTKFace.tar.gz"}',
    )
    assert [(tag.key, tag.value) for tag in used.tags] == [("mlflow.data.context", "training")]


def test_an_unreachable_store_only_warns(tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        tracker = RunTracker("exp", uri=f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
        tracker.log_params({"a": 1})
        tracker.log_metrics({"b": 2.0})
        tracker.finish()
    assert not tracker.active
    assert "continuing without it" in caplog.text


def test_finished_run_ids_read_from_sqlite_agree_with_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert finished_run_ids("exp", "data-a", uri) == []  # no store yet
    ids = {}
    for name, fingerprint, status in [
        ("a1", "data-a", "FINISHED"),
        ("a2", "data-a", "FINISHED"),
        ("b1", "data-b", "FINISHED"),
        ("a3", "data-a", "FAILED"),
    ]:
        tracker = RunTracker("exp", run_name=name, tags={"dataset_fingerprint": fingerprint}, uri=uri)
        tracker.finish(status)
        ids[name] = tracker.run_id
    RunTracker("other", tags={"dataset_fingerprint": "data-a"}, uri=uri).finish()
    client = MlflowClient(uri)
    deleted = RunTracker("exp", tags={"dataset_fingerprint": "data-a"}, uri=uri)
    deleted.finish()
    client.delete_run(deleted.run_id)

    fast = finished_run_ids("exp", "data-a", uri)
    assert fast == sorted([ids["a1"], ids["a2"]])
    assert fast == sorted(run.info.run_id for run in finished_runs("exp", "data-a", uri))
    assert finished_run_ids("exp", "data-b", uri) == [ids["b1"]]


def test_finished_run_ids_of_an_unreadable_store_only_warn(tmp_path, caplog):
    (tmp_path / "mlflow.db").write_text("not a database")
    with caplog.at_level(logging.WARNING):
        assert finished_run_ids("exp", "data-a", f"sqlite:///{tmp_path / 'mlflow.db'}") == []
    assert "cannot read MLflow runs" in caplog.text


SILENT_SERVER_CLIENT = """
import socket, sys, threading, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
connections = []
def accept():
    while True:
        connection, _ = listener.accept()
        connections.append(connection)  # accepted, never answered
threading.Thread(target=accept, daemon=True).start()
import os
os.environ["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{listener.getsockname()[1]}"
from faceage.tracking.runs import RunTracker
from faceage.tracking.store import finished_run_ids, finished_runs
tracker = RunTracker("exp", run_name="x")
tracker.log_metrics({"a": 1.0})
tracker.finish()
print(tracker.active, finished_run_ids("exp", "f"), finished_runs("exp", "f"), len(connections))
"""


@pytest.mark.slow  # waits out the probe's timeout
def test_a_server_that_does_not_answer_is_given_up_after_one_probe(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SILENT_SERVER_CLIENT], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    active, ids, runs, connections = result.stdout.split()
    assert (active, ids, runs) == ("False", "[]", "[]")
    assert int(connections) == 1  # one health probe; MLflow's own retries would connect again and again
    assert result.stderr.count("does not answer") == 1


RACER = """
import sys, time
from faceage.tracking.runs import RunTracker
start = float(sys.argv[2])
while time.time() < start:
    pass
tracker = RunTracker("new experiment", run_name=sys.argv[3], uri=sys.argv[1])
while time.time() < start + 12:  # then every run logs the same data set at once
    pass
tracker.log_dataset("demo.tar.gz", "abc123", "data/demo.tar.gz", 10)
tracker.log_metrics({"value": 1.0})
tracker.finish()
print(tracker.active)
"""


@pytest.mark.slow
def test_runs_started_at_once_on_a_new_store_all_land(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 8  # every process imported and waiting before the first opens the store
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, uri, str(start), f"run{i}"], stdout=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    assert [racer.communicate(timeout=180)[0].strip() for racer in racers] == ["True"] * 4
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("new experiment")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == [f"run{i}" for i in range(4)]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert [[i.dataset.digest for i in run.inputs.dataset_inputs] for run in runs] == [["abc123"]] * 4


def test_the_run_user_is_the_servers_user_else_the_systems_else_unknown(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    assert user_name() == "alice"
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.setattr("getpass.getuser", lambda: "bob")
    assert user_name() == "bob"

    def nameless():
        raise KeyError("getpwuid(): uid not found: 1234")

    monkeypatch.setattr("getpass.getuser", nameless)
    assert user_name() == "unknown"


def test_the_experiment_opens_in_mlflows_model_training_view_new_or_old(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    RunTracker("new", uri=uri).finish()
    client.create_experiment("old")  # made before faceage set the kind
    RunTracker("old", uri=uri).finish()
    for name in ("new", "old"):
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.parametrize("seconds", [1, 0])
def test_a_training_run_records_the_machines_use_unless_turned_off(tmp_path, seconds):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker("exp", uri=uri)
    tracker.mark_running()
    with tracker.system_metrics(seconds):
        time.sleep(2.5)
    tracker.finish()
    client = MlflowClient(uri)
    recorded = {key for key in client.get_run(tracker.run_id).data.metrics if key.startswith("system/")}
    if seconds:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= recorded
        assert len(client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")) >= 2
    else:
        assert not recorded
