"""Stage train: fit the model on the train split, keep the best epoch, calibrate its intervals on the calibration
split, and log the run and the model (as a servable MLflow model, see faceage.serving.pyfunc) to MLflow. With
``members`` in params.yaml, each member is trained next, logged to a run nested in the stage's, and the networks
are kept as one model.
With ``train.nproc`` > 1 the stage starts itself that many times under torchrun; started by torchrun (or a
scheduler's torchrun across nodes), it is one of the training processes, and only the first of them logs and
writes outputs."""

import functools
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from faceage.data.manifest import dataset_fingerprint, load_dataset, load_images, load_manifest
from faceage.model.checkpoint import Checkpoint, checkpoint_of, save_checkpoint
from faceage.model.networks import fetch_pretrained_weights
from faceage.params import MAIN_MEMBER, Params, load_params
from faceage.plots import learning_curves
from faceage.serving.pyfunc import log_age_model
from faceage.stage import pipeline_paths, run_stage, write_csv, write_json
from faceage.tracking.runs import RunTracker
from faceage.tracking.training_runs import resumable_run, start_member_run, start_pipeline_run
from faceage.training.calibrate import calibrate
from faceage.training.distributed import Workers, joined, launch, launched_by_torchrun
from faceage.training.loop import train_network
from faceage.training.losses import UNKNOWN_GENDER
from faceage.training.members import assemble, member_params
from faceage.training.reports import headline_metrics, history_table
from faceage.training.resume import ResumeFile
from faceage.training.setup import TrainingSetup, split_ids


def main() -> None:
    params = load_params()
    if params.train.nproc > 1 and not launched_by_torchrun():
        launch(params.train.nproc, params.train.max_restarts, sys.argv[0])
        return
    with joined() as workers:
        train(params, pipeline_paths(), workers)


def train(params: Params, paths: dict[str, Path], workers: Workers) -> None:
    ingested = paths["ingested"]
    manifest, split, images = load_manifest(ingested), pd.read_csv(paths["split"]), load_images(ingested)
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
    resumes = {
        name: ResumeFile(state_file(paths["resume"], name), setup.fingerprint()) for name, setup in setups.items()
    }
    if not workers.is_main:
        for name, setup in setups.items():
            train_network(setup, resume=resumes[name], workers=workers)
        return
    dataset = load_dataset(ingested)
    fingerprint = dataset_fingerprint(ingested, paths["split"])
    start = functools.partial(start_pipeline_run, params, fingerprint, "stages/train.py")
    with (
        resumable_run(resumes[MAIN_MEMBER], start) as tracker,
        tracker.system_metrics(params.mlflow.system_metrics_seconds),
    ):
        tracker.log_dataset(dataset["name"], fingerprint, params.data.source, len(manifest))
        tracker.set_tags({"dataset_kind": dataset["kind"]})
        tracker.log_params({k: v for k, v in asdict(params).items() if k != "demo"})
        results = {}
        for name, setup in setups.items():
            if name == MAIN_MEMBER:
                results[name] = train_network(
                    setup, resume=resumes[name], on_epoch_end=tracker.log_epoch, workers=workers
                )
                continue
            member = functools.partial(start_member_run, tracker, params.member(name), name)
            with resumable_run(resumes[name], member) as run:
                results[name] = train_network(setup, resume=resumes[name], on_epoch_end=run.log_epoch, workers=workers)
                run.log_metrics(
                    {**headline_metrics(results[name].summary), "parameters": results[name].summary["parameters"]}
                )
        model, summary = assemble(results, setups, params.model.reference_blend)
        main = setups[MAIN_MEMBER]
        calibration_faces = (main.val_ids, split_ids(split, "calibration"), params.intervals)
        inference = (params.evaluate.batch_size, model.bin_ages.device, params.evaluate.flip_tta)
        summary["intervals"] = calibrate(model, images, main.ages, *calibration_faces, *inference)
        best = results[MAIN_MEMBER].summary["best_epoch"]
        info = {"faces": params.faces, "dataset": dataset, "run_id": tracker.run_id, "epoch": best}
        checkpoint = checkpoint_of(model, [setup.model_params for setup in setups.values()], **info)
        write_outputs(checkpoint, summary, results[MAIN_MEMBER].history, tracker, paths)
        log_age_model(tracker, paths["model"], params.faces, images[setups[MAIN_MEMBER].val_ids[0]], dataset)
    for resume in resumes.values():  # only now: a crash before this point costs no training
        resume.remove()


def state_file(folder: Path, name: str) -> Path:
    """Where network ``name`` saves its training state after each epoch."""
    return folder / ("train_state.pt" if name == MAIN_MEMBER else f"member_{name}.pt")


def write_outputs(
    checkpoint: Checkpoint, summary: dict, history: list[dict], tracker: RunTracker, paths: dict[str, Path]
) -> None:
    """The checkpoint, metrics, report and plots, each also logged to the run."""
    save_checkpoint(replace(checkpoint, val_mae=summary["best_val_mae"]), paths["model"])
    write_json({**summary, "mlflow_run_id": tracker.run_id}, paths["train_report"])
    headline = headline_metrics(summary)
    write_json(headline, paths["train_metrics"])
    write_csv(history_table(history, summary["best_epoch"]), paths["train_history"])
    learning_curves(history, summary["best_epoch"], paths["train_curves"])
    tracker.log_metrics({**headline, "parameters": summary["parameters"], "epochs_run": len(history)})
    tracker.set_tags({"precision": summary["precision"]})
    for name, folder in (("train_report", "reports"), ("train_history", "plots"), ("train_curves", "plots")):
        tracker.log_artifact(paths[name], folder)


if __name__ == "__main__":
    run_stage(main)
