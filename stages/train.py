"""Stage train: fit the model on the train split, keep the best epoch, and log the run and the model
(as a servable MLflow model, see faceage.serving.pyfunc) to MLflow. With ``members`` in params.yaml, each member is
trained next, logged to a run nested in the stage's, and the networks are kept as one ensemble model.
With ``train.nproc`` > 1 the stage starts itself that many times under torchrun; started by torchrun (or a
scheduler's torchrun across nodes), it is one of the training processes, and only the first of them logs and
writes outputs."""

import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from faceage.data.ingest import MANIFEST_FILE, load_dataset, load_images, load_manifest
from faceage.model.networks import fetch_pretrained_weights
from faceage.params import MAIN_MEMBER, Params, load_params
from faceage.plots import learning_curves
from faceage.stage import run_stage, write_csv, write_json
from faceage.tracking.store import (
    RunTracker,
    dataset_fingerprint,
    end_run,
    ended_status,
    start_member_run,
    start_pipeline_run,
)
from faceage.training.distributed import Workers, joined, launch, launched_by_torchrun
from faceage.training.loop import ResumeFile, TrainingSetup, TrainResult, headline_metrics, history_table, train_model
from faceage.training.losses import UNKNOWN_GENDER
from faceage.training.members import combine, member_params

INGESTED = "data/ingested"
SPLIT_FILE = "data/split.csv"
MODEL = "models/model.pt"
STATE = "models/resume/train_state.pt"
METRICS = "metrics/train.json"  # headline figures, tracked by DVC and charted by MLflow
REPORT = "reports/train.json"  # every figure, and the MLflow run
HISTORY = "plots/train/history.csv"
CURVES = "plots/train/learning_curves.png"


def main() -> None:
    params = load_params()
    if params.train.nproc > 1 and not launched_by_torchrun():
        launch(params.train.nproc, params.train.max_restarts, sys.argv[0])
        return
    with joined() as workers:
        train(params, workers)


def train(params: Params, workers: Workers) -> None:
    manifest, split, images = load_manifest(INGESTED), pd.read_csv(SPLIT_FILE), load_images(INGESTED)
    genders = manifest["gender"].fillna(UNKNOWN_GENDER).to_numpy()
    networks = member_params(params)
    for network in networks.values():
        fetch_pretrained_weights(network.model)
    setups = {
        name: TrainingSetup(
            images,
            manifest["age"].to_numpy(),
            genders,
            split,
            member.model,
            member.train,
            member.augment,
            (params.data.min_age, params.data.max_age),
        )
        for name, member in networks.items()
    }
    resumes = {name: ResumeFile(state_file(name), setup.fingerprint()) for name, setup in setups.items()}
    if not workers.is_main:
        for name, setup in setups.items():
            train_model(setup, resume=resumes[name], workers=workers)
        return
    dataset = load_dataset(INGESTED)
    tracker = open_run(params, resumes[MAIN_MEMBER], dataset, len(manifest))
    try:
        results = {
            name: train_member(name, setup, resumes[name], tracker, params, workers) for name, setup in setups.items()
        }
        result = combine(results, setups, params.model.reference_blend) if params.members else results[MAIN_MEMBER]
        write_outputs(result, tracker, params, dataset)
        tracker.log_model(MODEL, params.faces, images[setups[MAIN_MEMBER].val_ids[0]], dataset)
    except BaseException as error:
        tracker.finish(ended_status(error))
        raise
    tracker.finish()
    for resume in resumes.values():  # only now: a crash before this point costs no training
        resume.remove()


def state_file(name: str) -> str:
    """Where member ``name`` saves its training state after each epoch."""
    return STATE if name == MAIN_MEMBER else f"{Path(STATE).parent}/member_{name}.pt"


def train_member(
    name: str, setup: TrainingSetup, resume: ResumeFile, tracker: RunTracker, params: Params, workers: Workers
) -> TrainResult:
    """Train one network: the main one logs to the stage's run, each other member to a run nested in it."""
    if name == MAIN_MEMBER:
        return train_model(setup, resume=resume, on_epoch_end=tracker.log_epoch, workers=workers)
    if resume.abandoned_run_id:
        end_run(resume.abandoned_run_id, "KILLED")
    member = start_member_run(tracker, params.member(name), name, run_id=resume.run_id)
    resume.run_id = member.run_id
    try:
        result = train_model(setup, resume=resume, on_epoch_end=member.log_epoch, workers=workers)
    except BaseException as error:
        member.finish(ended_status(error))
        raise
    member.log_metrics({**headline_metrics(result.summary), "parameters": result.summary["parameters"]})
    member.finish()
    return result


def open_run(params: Params, resume: ResumeFile, dataset: dict[str, str], rows: int) -> RunTracker:
    """The MLflow run of this training: the one an interrupted training started, else a new one."""
    if resume.abandoned_run_id:
        end_run(resume.abandoned_run_id, "KILLED")
    fingerprint = dataset_fingerprint([Path(INGESTED) / MANIFEST_FILE, SPLIT_FILE])
    tracker = start_pipeline_run(params, fingerprint, "stages/train.py", run_id=resume.run_id)
    tracker.log_dataset(dataset["name"], fingerprint, params.data.source, rows)
    tracker.set_tags({"dataset_kind": dataset["kind"]})
    resume.run_id = tracker.run_id
    tracker.log_params({k: v for k, v in asdict(params).items() if k != "demo"})
    for row in resume.history:  # epochs logged before an interruption are kept; any the run lacks are added
        tracker.log_epoch(row)
    return tracker


def write_outputs(result: TrainResult, tracker: RunTracker, params: Params, dataset: dict[str, str]) -> None:
    """The checkpoint (with the face settings and what it learnt from), metrics, report and plots, each also
    logged to the run."""
    Path(MODEL).parent.mkdir(parents=True, exist_ok=True)
    extra = {"faces": asdict(params.faces), "dataset": dataset, "mlflow_run_id": tracker.run_id}
    torch.save({**result.checkpoint, **extra}, MODEL)
    write_json({**result.summary, "mlflow_run_id": tracker.run_id}, REPORT)
    headline = headline_metrics(result.summary)
    write_json(headline, METRICS)
    write_csv(history_table(result.history, result.summary["best_epoch"]), HISTORY)
    learning_curves(result.history, result.summary["best_epoch"], CURVES)
    tracker.log_metrics({**headline, "parameters": result.summary["parameters"], "epochs_run": len(result.history)})
    tracker.set_tags({"precision": result.summary["precision"]})
    for path, folder in ((REPORT, "reports"), (HISTORY, "plots"), (CURVES, "plots")):
        tracker.log_artifact(path, folder)


if __name__ == "__main__":
    run_stage(main)
