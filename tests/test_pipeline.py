"""End to end: the real DVC pipeline on a tiny demo data set, in a temporary copy of the repository."""

import json
import subprocess

import pytest
from conftest import REPO
from mlflow import MlflowClient

from benchmarks.workspace import copy_worktree, set_params, tool_env

TINY = {
    "demo": {"num_images": 150, "image_size": 48},
    "data": {"image_size": 32},
    "model": {"backbone": "mobilenet_v2", "pretrained": False, "input_size": 32},
    "train": {"epochs": 1, "batch_size": 16},
}


def run(args, cwd, **extra_env):
    """Run a command with this environment's tools first on PATH and MLflow's default store."""
    result = subprocess.run(args, cwd=cwd, env=tool_env(**extra_env), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def mlflow_runs(repo):
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("faceage").experiment_id])


def stages_run(output):
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC copy of the working tree (files git does not ignore), with tiny parameters."""
    return copy_worktree(REPO, tmp_path_factory.mktemp("repo"), TINY)


def test_repro_runs_every_stage_then_is_a_no_op(repo):
    output = run(["dvc", "repro"], repo)
    assert stages_run(output) == ["demo", "ingest", "split", "train", "evaluate", "runs", "compare"]
    for name in ("ingest", "split", "train", "evaluate", "compare"):
        assert (repo / "metrics" / f"{name}.json").is_file()
    for plot in ("split/age_histogram.png", "train/learning_curves.png", "evaluate/bucket_mae.png"):
        assert (repo / "plots" / plot).read_bytes().startswith(b"\x89PNG")
    for gallery in ("worst_errors.png", "gradcam.png"):
        assert (repo / "data" / "galleries" / gallery).read_bytes().startswith(b"\x89PNG")
    assert (repo / "models" / "model.pt").is_file()
    (mlflow_run,) = mlflow_runs(repo)
    assert mlflow_run.data.tags["backbone"] == "mobilenet_v2" and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["model.input_size"] == "32"
    assert "test.mae.value" in mlflow_run.data.metrics  # evaluate logged into the model's run
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "evaluate")}
    assert {"evaluate/evaluate.json", "evaluate/gradcam.png", "evaluate/bucket_mae.csv"} <= logged

    compare = json.loads((repo / "metrics" / "compare.json").read_text())
    assert compare["runs_considered"] == 1 and compare["significance"] is None
    assert compare["leaderboard"][0]["run_id"] == mlflow_run.info.run_id

    assert json.loads((repo / "data" / "mlflow_runs.json").read_text())["finished_runs"] == [mlflow_run.info.run_id]

    output = run(["dvc", "repro"], repo)
    assert stages_run(output) == ["runs"]  # always checks the MLflow store; nothing changed, so no compare
    assert "Stage 'compare' didn't change" in output


def test_plots_render_offline(repo):
    run(["dvc", "plots", "show", "-o", "rendered"], repo)
    page = (repo / "rendered" / "index.html").read_text()
    assert "vegaEmbed(" in page and "https://cdn" not in page and "<script src" not in page
    assert "Test MAE per age bucket" in page
    assert "Test MAE of each backbone" in page
    assert page.count('<img src="static/') == 8


def commit(repo, message):
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


def test_an_experiment_with_another_backbone_is_compared(repo):
    commit(repo, "baseline results")
    run(["dvc", "exp", "run", "-S", "model.backbone=resnet18"], repo)
    diff = run(["dvc", "metrics", "diff", "--md"], repo)
    assert "test.mae.value" in diff and "best_val_mae" in diff
    runs = mlflow_runs(repo)
    assert sorted(r.data.tags["backbone"] for r in runs) == ["mobilenet_v2", "resnet18"]
    assert len({r.data.tags["dataset_fingerprint"] for r in runs}) == 1
    compare = json.loads((repo / "metrics" / "compare.json").read_text())
    assert compare["runs_considered"] == 2
    assert {row["backbone"] for row in compare["leaderboard"]} == {"mobilenet_v2", "resnet18"}
    assert compare["significance"]["against_backbone"] == "mobilenet_v2"
    assert compare["significance"]["verdict"] in ("better", "worse", "no significant difference")


def test_a_queued_experiment_logs_into_the_workspace_store(repo):
    run(["dvc", "exp", "run", "--queue", "-S", "model.backbone=mobilenet_v3_small"], repo)
    run(["dvc", "exp", "run", "--run-all"], repo)
    backbones = sorted(r.data.tags["backbone"] for r in mlflow_runs(repo))
    assert backbones == ["mobilenet_v2", "mobilenet_v3_small", "resnet18"]
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))
    # The workspace's compare has not seen the queued run yet; the next repro notices the store changed.
    assert json.loads((repo / "metrics" / "compare.json").read_text())["runs_considered"] == 2
    assert stages_run(run(["dvc", "repro"], repo)) == ["runs", "compare"]
    assert json.loads((repo / "metrics" / "compare.json").read_text())["runs_considered"] == 3


def test_changing_the_split_seed_reruns_split_and_what_follows(repo):
    runs_before = len(mlflow_runs(repo))
    set_params(repo, {"split": {"seed": 7}})
    output = run(["dvc", "repro"], repo)
    assert stages_run(output) == ["split", "train", "evaluate", "runs", "compare"]
    assert "metrics/split.json" in run(["dvc", "metrics", "diff"], repo)
    assert len(mlflow_runs(repo)) == runs_before + 1


def test_an_unreachable_mlflow_store_still_trains_the_model(repo, tmp_path):
    set_params(repo, {"split": {"seed": 8}})
    (tmp_path / "file").write_text("")
    output = run(["dvc", "repro", "train"], repo, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'file' / 'x.db'}")
    assert "continuing without it" in output
    assert stages_run(output) == ["split", "train"]
    assert (repo / "models" / "model.pt").is_file()
