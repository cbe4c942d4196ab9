"""End to end: the real DVC pipeline on a tiny demo data set, each test in its own copy of the repository."""

import json
import shutil
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, TINY, commit, run
from mlflow import MlflowClient

from benchmarks.workspace import copy_worktree, set_params, tool_env
from faceage.evaluation.compare import NO_DIFFERENCE
from faceage.params import load_params
from faceage.tracking.runs import flatten

pytestmark = pytest.mark.slow

TIMINGS = {  # figures that vary from run to run: how long things took
    "seconds",
    "images_per_second",
    "head_images_per_second",
    "finetune_images_per_second",
    "inference",
    "train_seconds",
    "train_images_per_second",
    "inference_images_per_second",
}
HEADLINE = {
    "metrics/train.json": ["best_epoch", "best_val_mae", "train_images_per_second", "train_seconds"],
    "metrics/evaluate.json": [
        "inference_images_per_second",
        "test_sources.restyled.age_group_accuracy",
        "test_sources.restyled.mae",
        "test_sources.restyled.mae_high",
        "test_sources.restyled.mae_low",
        "test_sources.restyled.reference_age_group_accuracy",
        "test_sources.restyled.reference_mae",
        "test.age_group_accuracy",
        "test.bias",
        "test.cs5",
        "test.pi_coverage",
        "test.pi_width",
        "test.mae",
        "test.mae_high",
        "test.mae_low",
        "test.rmse",
        "test_bucket_mae",  # one per bucket with test images: headline_keys() lists them
        "val.mae",
        "val.mae_high",
        "val.mae_low",
    ],
}


def headline_keys(repo):
    """:data:`HEADLINE`, the buckets named (DVC leaves out a bucket without test images: its MAE is null)."""
    buckets = read_json(repo / "metrics" / "evaluate.json")["test_bucket_mae"]
    named = [f"test_bucket_mae.{label}" for label, mae in buckets.items() if mae is not None]
    assert len(named) >= 6
    return {
        path: sorted(k for key in keys for k in (named if key == "test_bucket_mae" else [key]))
        for path, keys in HEADLINE.items()
    }


def mlflow_client(repo):
    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def mlflow_runs(repo):
    client = mlflow_client(repo)
    return client.search_runs([client.get_experiment_by_name("faceage").experiment_id])


def stages_run(output):
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def read_json(path):
    return json.loads(path.read_text())


@pytest.fixture
def repo(prepared, tmp_path):
    """This test's own copy of :func:`prepared`."""
    return shutil.copytree(prepared, tmp_path / "repo", symlinks=True)


@pytest.fixture(scope="module")
def reproduced_once(prepared, tmp_path_factory):
    """:func:`prepared` after a whole ``dvc repro``, committed. Tests work on copies of it, never on it."""
    repo = shutil.copytree(prepared, tmp_path_factory.mktemp("reproduced") / "repo", symlinks=True)
    run(["dvc", "repro"], repo)
    commit(repo, "repro")
    return repo


@pytest.fixture
def reproduced(reproduced_once, tmp_path):
    """This test's own copy of :func:`reproduced_once`."""
    return shutil.copytree(reproduced_once, tmp_path / "repo", symlinks=True)


def test_repro_runs_every_stage_then_is_a_no_op(tmp_path):
    repo = copy_worktree(REPO, tmp_path, {**TINY, "mlflow": {"system_metrics_seconds": 1}})
    output = run(["dvc", "repro"], repo)
    stages = ["demo", "ingest", "test_source@restyled", "split", "train", "evaluate", "export", "runs", "compare"]
    assert stages_run(output) == stages
    for name in ("ingest", "split", "train", "evaluate", "export", "compare"):
        assert (repo / "reports" / f"{name}.json").is_file()
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo))
    (workspace,) = shown.values()
    tracked = {path: sorted(flatten(values["data"])) for path, values in workspace["data"].items()}
    assert tracked == headline_keys(repo)  # the headline figures only; the details are in reports/
    history = pd.read_csv(repo / "plots" / "train" / "history.csv")
    train = read_json(repo / "metrics" / "train.json")
    assert list(history.columns) == ["epoch", "phase", "train_loss", "train_mae", "val_mae", "lr", "marker"]
    summary = read_json(repo / "reports" / "train.json")
    assert history["epoch"].tolist() == list(range(1, summary["epochs_run"] + 1))
    assert history["val_mae"].min() == pytest.approx(summary["epoch_val_mae"], abs=1e-4)
    marked = history.dropna(subset=["marker"]).set_index("epoch")["marker"].to_dict()
    first_finetune = int(history.loc[history["phase"] == "finetune", "epoch"].min())
    expected = {first_finetune: ["fine-tuning starts"]}
    expected.setdefault(train["best_epoch"], []).append("best epoch")
    assert marked == {epoch: ", ".join(names) for epoch, names in expected.items()}
    for plot in ("split/age_histogram.png", "train/learning_curves.png", "evaluate/bucket_mae.png"):
        assert (repo / "plots" / plot).read_bytes().startswith(b"\x89PNG")
    for gallery in ("worst_errors.png", "gradcam.png"):
        assert (repo / "data" / "galleries" / gallery).read_bytes().startswith(b"\x89PNG")
    (mlflow_run,) = mlflow_runs(repo)
    assert mlflow_run.data.tags["backbone"] == "mobilenet_v2" and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["model.input_size"] == "32"
    charted = dict(mlflow_run.data.metrics)  # the headline figures, the per-epoch ones, the machine's use
    system = {key for key in charted if key.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    for key in system:
        del charted[key]
    headline = {key.replace("+", "_") for keys in headline_keys(repo).values() for key in keys}
    intervals = {"intervals.test_one_width_width", "intervals.restyled_coverage", "intervals.restyled_width"}
    challenge = {f"challenge_ages.{age}" for age in (13, 16, 18, 21, 25)}
    per_epoch = {"parameters", "epochs_run", "train_loss", "train_mae", "val_mae", "lr"}
    assert headline | intervals | challenge | per_epoch == charted.keys()
    logged = {a.path for a in mlflow_client(repo).list_artifacts(mlflow_run.info.run_id, "evaluate")}
    assert {"evaluate/evaluate.json", "evaluate/gradcam.png", "evaluate/bucket_mae.csv"} <= logged

    compare = read_json(repo / "reports" / "compare.json")
    assert compare["runs_considered"] == 1 and compare["significance"] is None
    assert compare["leaderboard"][0]["run_id"] == mlflow_run.info.run_id
    # The test source: every restyled face ingested, predicted beside dlib's untouched model, and reported alike.
    predictions = pd.read_csv(repo / "data" / "predictions.csv")
    restyled = predictions[predictions["split"] == "restyled"]
    assert (
        len(restyled)
        == TINY["demo"]["restyled_images"]
        == read_json(repo / "reports/test_sources/restyled.json")["outcomes"]["kept"]
    )
    source = read_json(repo / "metrics" / "evaluate.json")["test_sources"]["restyled"]
    assert source["mae"] == pytest.approx(restyled["error"].abs().mean(), abs=1e-4)
    assert source["reference_mae"] == pytest.approx(
        (restyled["reference_age"] - restyled["true_age"]).abs().mean(), abs=1e-4
    )
    assert compare["leaderboard"][0]["sources"]["restyled"]["mae"] == source["mae"]
    assert pd.read_csv(repo / "plots" / "compare" / "leaderboard.csv")["restyled_mae"].tolist() == [source["mae"]]
    assert read_json(repo / "data" / "mlflow_runs.json")["finished_runs"] == [mlflow_run.info.run_id]
    # Intervals: calibrated on the validation and calibration splits per age group (the settings' groups, merged
    # where they have too few faces), reported per split and source, and the model card.
    calibration = summary["intervals"]
    split = pd.read_csv(repo / "data" / "split.csv")
    assert calibration["calibrated_on"] == ["val", "calibration"]
    assert calibration["calibration_faces"] == split["split"].isin(["val", "calibration"]).sum() >= 9
    firsts = [int(first) for first in calibration["age_group_quantiles"]]
    params = load_params(repo / "params.yaml")
    assert firsts[0] == params.data.min_age and set(firsts[1:]) <= set(params.intervals.age_groups)
    assert calibration["spread"] in calibration["val_width_by_spread"]
    test = predictions[predictions["split"] == "test"]
    inside = (test["age_low"] <= test["true_age"]) & (test["true_age"] <= test["age_high"])
    metrics = read_json(repo / "metrics" / "evaluate.json")
    assert metrics["test"]["pi_coverage"] == pytest.approx(inside.mean(), abs=1e-4)
    thresholds = pd.read_csv(repo / "reports" / "thresholds.csv")
    assert set(zip(thresholds["split"], thresholds["threshold"], strict=True)) == {
        (name, t) for name in ("val", "test", "restyled") for t in (13, 16, 18, 21, 25)
    }
    card = (repo / "reports" / "model_card.md").read_text()
    assert "**Not for:**" in card and "| 18 |" in card and "restyled" in card and "CC0-1.0" in card
    assert mlflow_run.data.tags["mlflow.note.content"] == card

    output = run(["dvc", "repro"], repo)
    assert stages_run(output) == ["runs"]  # always checks the MLflow store; nothing changed, so no compare
    assert "Stage 'compare' didn't change" in output

    run(["dvc", "plots", "show", "-o", "rendered"], repo)
    page = (repo / "rendered" / "index.html").read_text()
    assert "vegaEmbed(" in page and "https://cdn" not in page and "<script src" not in page
    assert "Test MAE per age bucket" in page and "Test MAE of each backbone" in page
    assert "Validation MAE per epoch" in page and "Test interval coverage per age bucket" in page
    assert "Test interval width per age bucket" in page
    # Pictures only where their scales do not follow the run's data; the others are vega plots.
    pictures = ("split_age_histogram", "evaluate_predicted_vs_true", "evaluate_age_groups")
    assert page.count('<img src="static/') == 3 and all(f"plots_{name}.png" in page for name in pictures)


def reproducible_results(repo):
    """What a forced re-run must reproduce exactly: the data outputs' hashes, the model's weights, and the
    metrics less timings and MLflow run ids."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    outs = [out for stage in ("demo", "ingest", "split", "evaluate") for out in lock[stage]["outs"]]
    hashes = {out["path"]: out["md5"] for out in outs if not out["path"].startswith(("metrics/", "reports/"))}
    weights = torch.load(repo / "models" / "model.pt", weights_only=True)["state_dict"]
    metrics = {}
    for path in [*HEADLINE, *(f"reports/{name}.json" for name in ("ingest", "split", "train", "evaluate"))]:
        report = read_json(repo / path)
        metrics[path] = {k: v for k, v in report.items() if k not in TIMINGS and k != "mlflow_run_id"}
    return hashes, weights, metrics


def test_a_forced_repro_reproduces_every_result(reproduced):
    repo = reproduced
    hashes, weights, metrics = reproducible_results(repo)
    run(["dvc", "repro", "-f"], repo)
    hashes_again, weights_again, metrics_again = reproducible_results(repo)
    assert {"data/ingested", "data/split.csv", "data/predictions.csv"} <= hashes.keys()
    assert hashes_again == hashes
    assert weights_again.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(value, weights_again[key]), key
    assert metrics_again == metrics


def test_the_verdict_is_against_the_best_other_run_on_validation(reproduced):
    repo = reproduced
    first = read_json(repo / "reports" / "train.json")["mlflow_run_id"]
    # A second run that barely trains, then a third: its rival is the other run best on validation, whichever
    # that is (test_compare checks that it need not be the latest).
    barely = ["-S", "model.backbone=resnet18", "-S", "train.head_lr=1e-7", "-S", "train.lr=1e-7"]
    run(["dvc", "exp", "run", *barely, "-S", "model.reference_blend=0.0"], repo)
    diff = run(["dvc", "metrics", "diff", "--md"], repo).strip().splitlines()
    rows = [line.split("|")[2].strip() for line in diff[2:]]  # | Path | Metric | HEAD | workspace | Change |
    # One screen, the test MAE in its first rows: 4th in metrics/evaluate.json, which DVC lists before or
    # after metrics/train.json's 4 rows.
    assert len(diff) <= 30 and "test.mae" in rows[:8], diff
    run(["dvc", "exp", "run", "-S", "model.backbone=mobilenet_v3_small"], repo)
    runs = {r.info.run_id: r for r in mlflow_runs(repo)}
    compare = read_json(repo / "reports" / "compare.json")
    current = compare["current_run"]
    assert runs[current].data.tags["backbone"] == "mobilenet_v3_small" and compare["runs_considered"] == 3
    val_mae = {run_id: r.data.metrics["val.mae"] for run_id, r in runs.items() if run_id != current}
    rival = min(val_mae, key=val_mae.get)
    assert first in val_mae and len(val_mae) == 2
    significance = compare["significance"]
    assert significance["against_run"] == rival
    assert significance["against_backbone"] == runs[rival].data.tags["backbone"]

    rival_file = mlflow_client(repo).download_artifacts(rival, "evaluate/predictions.csv", str(repo / "rival"))
    mine, theirs = (
        pd.read_csv(path).query("split == 'test'").set_index("id")
        for path in (repo / "data" / "predictions.csv", rival_file)
    )
    test_ids = mine.index.to_numpy()  # test sources' rows share ids with the split's: compare the test split's
    differences = mine["error"].abs()[test_ids] - theirs["error"].abs()[test_ids]
    assert significance["images"] == len(test_ids) > 0
    assert significance["mae_difference"] == pytest.approx(differences.mean(), abs=1e-4)
    assert significance["ci_low"] <= significance["mae_difference"] <= significance["ci_high"]
    low, high = significance["ci_low"], significance["ci_high"]
    assert significance["verdict"] == ("better" if high < 0 else "worse" if low > 0 else NO_DIFFERENCE)


def kill_training_after_an_epoch(repo):
    """Start the train stage and kill it (SIGKILL: it cannot say so) once it has saved its state."""
    state = repo / "models" / "resume" / "train_state.pt"
    training = subprocess.Popen(
        [sys.executable, "stages/train.py"],
        cwd=repo,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while training.poll() is None and not state.exists():
        time.sleep(0.01)
    training.send_signal(signal.SIGKILL)
    assert training.wait() == -signal.SIGKILL
    return state


def test_a_killed_training_resumes_into_the_same_mlflow_run_and_remakes_lost_outputs(repo):
    set_params(repo, {"train": {"head_epochs": 2, "epochs": 3}})
    kill_training_after_an_epoch(repo)
    (killed,) = mlflow_runs(repo)
    assert killed.info.status == "RUNNING"
    shutil.rmtree(repo / "plots" / "train")  # a tracked output folder gone, as an interrupted run can leave it

    output = run(["dvc", "repro", "train"], repo)
    assert "resuming from models/resume/train_state.pt" in output
    (resumed,) = mlflow_runs(repo)
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    history = mlflow_client(repo).get_metric_history(resumed.info.run_id, "val_mae")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert read_json(repo / "reports" / "train.json")["mlflow_run_id"] == resumed.info.run_id
    assert len(pd.read_csv(repo / "plots" / "train" / "history.csv")) == 5
    assert not list((repo / "models" / "resume").iterdir())


def test_training_lost_at_its_outputs_is_kept_and_a_dead_process_run_is_closed(repo):
    """Outputs that cannot be written fail the stage and its MLflow run, but keep the finished training: the
    next run writes them without training again. A run whose process died unresumable is marked FAILED."""
    set_params(repo, {"train": {"head_epochs": 1, "epochs": 1}})
    (repo / "reports" / "train.json").unlink(missing_ok=True)
    (repo / "reports" / "train.json").mkdir(parents=True)  # the report cannot be written
    failed = subprocess.run([sys.executable, "stages/train.py"], cwd=repo, env=tool_env(), capture_output=True)
    assert failed.returncode != 0
    (run_failed,) = mlflow_runs(repo)
    assert run_failed.info.status == "FAILED" and (repo / "models" / "resume" / "train_state.pt").is_file()
    (repo / "reports" / "train.json").rmdir()
    output = run([sys.executable, "stages/train.py"], repo)
    assert "resuming from models/resume/train_state.pt after epoch 2" in output and "epoch 1 (" not in output
    assert read_json(repo / "reports" / "train.json")["mlflow_run_id"] == run_failed.info.run_id
    assert not (repo / "models" / "resume" / "train_state.pt").exists()

    set_params(repo, {"train": {"head_epochs": 2, "epochs": 1}})
    kill_training_after_an_epoch(repo).unlink()  # killed, and its state lost: that run can never resume
    run([sys.executable, "stages/train.py"], repo)
    statuses = {r.info.run_id: r.info.status for r in mlflow_runs(repo)}
    newest = read_json(repo / "reports" / "train.json")["mlflow_run_id"]
    assert statuses.pop(newest) == "FINISHED" and statuses.pop(run_failed.info.run_id) == "FINISHED"
    assert list(statuses.values()) == ["FAILED"]


def test_an_ensemble_is_one_model_with_its_members_runs_nested_in_its_run(repo):
    set_params(repo, {"members": {"wide": {"model": {"input_size": 40}, "train": {"seed": 7}}}})
    run(["dvc", "repro"], repo)
    report = read_json(repo / "reports" / "train.json")
    runs = {r.info.run_id: r for r in mlflow_runs(repo)}
    parent = runs.pop(report["mlflow_run_id"])
    (member,) = runs.values()
    assert (
        member.data.tags["mlflow.parentRunId"] == parent.info.run_id and member.data.tags["ensemble_member"] == "wide"
    )
    assert member.info.status == parent.info.status == "FINISHED"
    assert member.data.params["model.input_size"] == "40" and member.data.params["train.seed"] == "7"
    assert member.data.metrics["best_val_mae"] == report["members"]["wide"]["best_val_mae"]
    assert parent.data.params["members.wide.model.input_size"] == "40"
    assert (parent.data.tags["backbone"], member.data.tags["backbone"]) == ("mobilenet_v2+mobilenet_v2", "mobilenet_v2")
    compare = read_json(repo / "reports" / "compare.json")  # ranked as the ensemble, its member runs left out
    assert compare["runs_considered"] == 1 and compare["leaderboard"][0]["backbone"] == "mobilenet_v2+mobilenet_v2"
    client = mlflow_client(repo)
    (logged,) = client.get_run(parent.info.run_id).outputs.model_outputs  # the run's MLflow model
    location = client.get_logged_model(logged.model_id).artifact_location
    served = mlflow.pyfunc.load_model(location, model_config={"engine": "pytorch"})  # the checkpoint, to look into
    model = served.unwrap_python_model().estimator.engine.model
    assert type(model).__name__ == "AgeModel" and model.input_sizes == (32, 40)  # both networks, one model


def test_a_student_replaces_the_ensemble_that_taught_it_which_stays_in_the_run(repo):
    """In two processes: the student, taught by the ensemble and within the tolerance, is models/model.pt and the
    run's MLflow model; the ensemble is logged beside it as ``teacher``."""
    members = {"wide": {"model": {"input_size": 40}, "train": {"seed": 7}}}
    set_params(repo, {"members": members, "student": {"distill_weight": 1.0, "tolerance": 150}, "train": {"nproc": 2}})
    run(["dvc", "repro", "train"], repo)
    report = read_json(repo / "reports" / "train.json")
    student = report["student"]
    assert student["kept"] and report["best_val_mae"] == student["best_val_mae"] != student["model_val_mae"]
    assert report["reference_blend"] == 0 and report["parameters"] == student["parameters"]
    checkpoint = torch.load(repo / "models" / "model.pt", weights_only=True)
    assert len(checkpoint["networks"]) == 1 and checkpoint["blend"] == 0 and checkpoint["calibration"] is not None
    runs = {r.info.run_id: r for r in mlflow_runs(repo)}
    parent = runs.pop(report["mlflow_run_id"])
    assert sorted(r.data.tags["ensemble_member"] for r in runs.values()) == ["student", "wide"]
    assert all(r.data.tags["mlflow.source.name"] == "stages/train.py" for r in runs.values())
    taught = next(r for r in runs.values() if r.data.tags["ensemble_member"] == "student")
    assert (
        taught.data.metrics["best_val_mae"] == student["best_val_mae"]
        and taught.data.params["train.distill_weight"] == "1.0"
    )
    client = mlflow_client(repo)
    logged = {
        model.name: model
        for model in map(
            client.get_logged_model, (o.model_id for o in client.get_run(parent.info.run_id).outputs.model_outputs)
        )
    }
    assert set(logged) == {"model", "teacher"}
    served = {name: mlflow.pyfunc.load_model(model.artifact_location) for name, model in logged.items()}
    sizes = {
        name: mlflow.pyfunc.load_model(model.artifact_location, model_config={"engine": "pytorch"})
        .unwrap_python_model()
        .estimator.engine.model.input_sizes
        for name, model in logged.items()
    }
    assert sizes == {"model": (32,), "teacher": (32, 40)}
    photo = pd.DataFrame({"image": [(REPO / "tests" / "data" / "astronaut.jpg").read_bytes()], "aligned": [False]})
    answers = {name: model.predict(photo) for name, model in served.items()}
    assert list(answers["model"].columns) == list(answers["teacher"].columns)  # the student serves as the ensemble
    for answer in answers.values():
        assert answer["error"].isna().all() and (answer["age_low"] <= answer["age_years"]).all()
        assert (answer["age_years"] <= answer["age_high"]).all()
    assert not list((repo / "models" / "resume").glob("*.pt"))


def test_an_experiment_in_two_processes_logs_one_run(repo):
    run(["dvc", "exp", "run", "-S", "train.nproc=2"], repo)
    report = read_json(repo / "reports" / "train.json")
    assert report["processes"] == 2
    (logged,) = mlflow_runs(repo)
    assert logged.info.status == "FINISHED" and logged.info.run_id == report["mlflow_run_id"]
    assert logged.data.params["train.nproc"] == "2"
    history = mlflow_client(repo).get_metric_history(logged.info.run_id, "val_mae")
    assert sorted(m.step for m in history) == list(range(1, report["epochs_run"] + 1))
    assert (repo / "models" / "model.pt").is_file() and not list((repo / "models" / "resume").glob("*.pt"))


def test_a_member_whose_weights_cannot_be_had_stops_training_before_it_starts(repo, tmp_path):
    set_params(repo, {"members": {"wide": {"model": {"pretrained": True}}}})  # ImageNet MobileNetV2
    dead_proxy = "http://127.0.0.1:9"  # nothing listens: a download fails at once, online or not
    offline = {"TORCH_HOME": str(tmp_path / "empty"), "HTTPS_PROXY": dead_proxy, "https_proxy": dead_proxy}
    result = subprocess.run(
        [sys.executable, "stages/train.py"], cwd=repo, env=tool_env(**offline), capture_output=True, text=True
    )
    assert result.returncode == 1 and "epoch 1" not in result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: pretrained weights mobilenet_v2-b0353104.pth are not in"), line


def test_a_failed_experiment_shows_no_figures_of_an_earlier_run(reproduced, tmp_path):
    repo = reproduced
    dead_proxy = "http://127.0.0.1:9"  # the ImageNet weights can be neither found nor downloaded: train fails
    offline = {"TORCH_HOME": str(tmp_path / "empty"), "HTTPS_PROXY": dead_proxy, "https_proxy": dead_proxy}
    failed = subprocess.run(
        ["dvc", "exp", "run", "-S", "model.pretrained=true"], cwd=repo, env=tool_env(**offline), capture_output=True
    )
    assert failed.returncode != 0 and not (repo / "metrics" / "evaluate.json").exists()
    (workspace, *_) = json.loads(run(["dvc", "exp", "show", "--json"], repo))
    shown = workspace["data"]["metrics"]["metrics/evaluate.json"]  # DVC shows "!" in its table
    assert workspace["rev"] == "workspace" and "data" not in shown and "No such file" in shown["error"]["msg"]


def test_an_ensemble_trains_in_two_processes(repo):
    run(["dvc", "exp", "run", "-S", "train.nproc=2", "-S", "+members.small.model.input_size=24"], repo)
    report = read_json(repo / "reports" / "train.json")
    assert {name: member["processes"] for name, member in report["members"].items()} == {"main": 2, "small": 2}
    assert sorted(r.info.status for r in mlflow_runs(repo)) == ["FINISHED", "FINISHED"]
    assert (repo / "models" / "model.pt").is_file() and not list((repo / "models" / "resume").glob("*.pt"))


def test_two_queued_experiments_started_at_once_on_no_store_both_land(repo):
    assert not (repo / "mlflow.db").exists()
    for backbone in ("resnet18", "mobilenet_v3_small"):
        run(["dvc", "exp", "run", "--queue", "-S", f"model.backbone={backbone}"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    tasks = [line.split()[0] for line in status.splitlines()[1:] if "Success" in line or "Failed" in line]
    logs = "\n".join(run(["dvc", "queue", "logs", task], repo) for task in tasks)
    assert status.count("Success") == 2, status + logs
    runs = mlflow_runs(repo)
    assert sorted(r.data.tags["backbone"] for r in runs) == ["mobilenet_v3_small", "resnet18"], logs
    assert {r.info.status for r in runs} == {"FINISHED"}, logs


def test_changing_the_split_seed_reruns_split_and_what_follows(reproduced):
    repo = reproduced
    set_params(repo, {"split": {"seed": 7}})
    output = run(["dvc", "repro"], repo)
    assert stages_run(output) == ["split", "train", "evaluate", "export", "runs", "compare"]
    assert "test.mae" in run(["dvc", "metrics", "diff"], repo)
    assert len(mlflow_runs(repo)) == 2


def test_an_unreachable_mlflow_store_still_trains_the_model(repo, tmp_path):
    (tmp_path / "file").write_text("")
    output = run(["dvc", "repro", "train"], repo, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'file' / 'x.db'}")
    assert "continuing without it" in output
    assert stages_run(output) == ["train"]
    assert (repo / "models" / "model.pt").is_file()
