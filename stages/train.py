"""Stage train: fit the model on the train split, keep the best epoch, calibrate its intervals on the calibration
split, and log the run and the model (as a servable MLflow model, see faceage.serving.pyfunc) to MLflow. With
``members`` in params.yaml, each member is trained next, logged to a run nested in the stage's, and the networks
are kept as one model. With ``student.distill_weight`` > 0, a student network taught by that model is trained
next; the one of the two kept in models/model.pt (the student when close enough on validation) is the run's
MLflow model, the other is logged beside it (``student`` or ``teacher``).
With ``train.nproc`` > 1 the stage starts itself that many times under torchrun; started by torchrun (or a
scheduler's torchrun across nodes), it is one of the training processes, and only the first of them logs and
writes outputs."""

import functools
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from faceage.data.manifest import dataset_fingerprint, load_dataset, load_images, load_manifest
from faceage.model.age_model import AgeModel
from faceage.model.checkpoint import Checkpoint, Teacher, checkpoint_of, save_checkpoint
from faceage.model.networks import fetch_pretrained_weights
from faceage.params import MAIN_MEMBER, STUDENT, Params, load_params
from faceage.plots import learning_curves
from faceage.sections import ModelParams
from faceage.serving.pyfunc import log_age_model
from faceage.stage import pipeline_paths, run_stage, write_csv, write_json
from faceage.tracking.runs import RunTracker
from faceage.tracking.training_runs import resumable_run, start_member_run, start_pipeline_run
from faceage.training.calibrate import calibrate
from faceage.training.distributed import Workers, joined, launch, launched_by_torchrun
from faceage.training.loop import TrainResult, train_network
from faceage.training.losses import UNKNOWN_GENDER
from faceage.training.members import assemble, member_params
from faceage.training.reports import headline_metrics, history_table
from faceage.training.resume import ResumeFile
from faceage.training.setup import TrainingSetup, split_ids
from faceage.training.student import TEACHER, student_model, student_setup, student_summary

SOURCE = "stages/train.py"  # the training code MLflow runs name


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
    setups = network_setups(params, manifest, split, images)
    resumes = {
        name: ResumeFile(state_file(paths["resume"], name), setup.fingerprint()) for name, setup in setups.items()
    }
    teaches = params.student.distill_weight > 0
    if not workers.is_main:
        results = {name: train_network(setup, resume=resumes[name], workers=workers) for name, setup in setups.items()}
        if teaches:
            setup = student_setup(
                setups[MAIN_MEMBER], params, assemble(results, setups, params.model.reference_blend)[0]
            )
            train_network(setup, resume=student_resume(paths, setup), workers=workers)
        return
    dataset = load_dataset(ingested)
    fingerprint = dataset_fingerprint(ingested, paths["split"])
    start = functools.partial(start_pipeline_run, params, fingerprint, SOURCE)
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
            else:
                results[name] = train_nested(tracker, params.member(name), name, setup, resumes[name], workers)
        model, summary = assemble(results, setups, params.model.reference_blend)
        trained = {TEACHER: (model, [setup.model_params for setup in setups.values()], results[MAIN_MEMBER])}
        if teaches:
            setup = student_setup(setups[MAIN_MEMBER], params, model)
            resumes[STUDENT] = student_resume(paths, setup)
            result = train_nested(tracker, params.student_params(), STUDENT, setup, resumes[STUDENT], workers)
            summary["student"] = student_summary(result, summary["best_val_mae"], params.student.tolerance)
            summary["seconds"] = round(summary["seconds"] + result.summary["seconds"], 1)
            trained[STUDENT] = (student_model(result, setup), [setup.model_params], result)
        keep_and_log(trained, summary, params, setups[MAIN_MEMBER], split, dataset, tracker, paths)
    for resume in resumes.values():  # only now: a crash before this point costs no training
        resume.remove()


def network_setups(
    params: Params, manifest: pd.DataFrame, split: pd.DataFrame, images: np.ndarray
) -> dict[str, TrainingSetup]:
    """The training of each network of the model (the main one first, then the members), weights fetched."""
    genders = manifest["gender"].fillna(UNKNOWN_GENDER).to_numpy()
    networks = member_params(params)
    for network in networks.values():
        fetch_pretrained_weights(network.model)
    age_range = (params.data.min_age, params.data.max_age)
    return {
        name: TrainingSetup(
            images, manifest["age"].to_numpy(), genders, split, member.model, member.train, member.augment, age_range
        )
        for name, member in networks.items()
    }


def keep_and_log(
    trained: dict[str, tuple[AgeModel, list[ModelParams], TrainResult]],
    summary: dict,
    params: Params,
    main: TrainingSetup,
    split: pd.DataFrame,
    dataset: dict,
    tracker: RunTracker,
    paths: dict[str, Path],
) -> None:
    """Calibrate the teacher and (when trained) the student, save the one served (the student when close enough
    on validation) with the stage's reports, and log both to the run: the served one as its MLflow model "model",
    the other under its role's name."""
    served = STUDENT if STUDENT in trained and summary["student"]["kept"] else TEACHER
    calibration_faces = (main.val_ids, split_ids(split, "calibration"), params.intervals)
    teacher = trained[TEACHER][0]
    inference = (params.evaluate.batch_size, teacher.bin_ages.device, params.evaluate.flip_tta)
    info = {"faces": params.faces, "dataset": dataset, "run_id": tracker.run_id}
    checkpoints = {}
    for role, (kept, built_with, result) in trained.items():
        intervals = calibrate(kept, main.images, main.ages, *calibration_faces, *inference)
        taught = {"teacher": Teacher(tuple(trained[TEACHER][1]), teacher.blend)} if role == STUDENT else {}
        checkpoints[role] = checkpoint_of(kept, built_with, epoch=result.summary["best_epoch"], **info, **taught)
        if role == served:
            summary["intervals"] = intervals
    if served == STUDENT:  # the kept model's figures; the epochs and speeds stay the main network's
        student = summary["student"]
        summary |= {"best_val_mae": student["best_val_mae"], "parameters": student["parameters"]}
        summary["reference_blend"] = 0.0
    write_outputs(checkpoints[served], summary, trained[TEACHER][2].history, tracker, paths)
    chip = main.images[main.val_ids[0]]
    log_age_model(tracker, paths["model"], params.faces, chip, dataset)
    for role in set(checkpoints) - {served}:  # the other model stays available in the run
        with tempfile.TemporaryDirectory() as folder:
            other = Path(folder) / "model.pt"
            save_checkpoint(checkpoints[role], other)
            log_age_model(tracker, other, params.faces, chip, dataset, name=role)


def train_nested(
    tracker: RunTracker, params: Params, name: str, setup: TrainingSetup, resume: ResumeFile, workers: Workers
) -> TrainResult:
    """Train network ``name`` (a member, or the student) in an MLflow run nested in the model's."""
    start = functools.partial(start_member_run, tracker, params, name, SOURCE)
    with resumable_run(resume, start) as run:
        result = train_network(setup, resume=resume, on_epoch_end=run.log_epoch, workers=workers)
        run.log_metrics({**headline_metrics(result.summary), "parameters": result.summary["parameters"]})
    return result


def student_resume(paths: dict[str, Path], setup: TrainingSetup) -> ResumeFile:
    """Where the student saves its training state, for the teacher it is given."""
    return ResumeFile(state_file(paths["resume"], STUDENT), setup.fingerprint())


def state_file(folder: Path, name: str) -> Path:
    """Where network ``name`` saves its training state after each epoch."""
    return folder / {MAIN_MEMBER: "train_state.pt", STUDENT: "student.pt"}.get(name, f"member_{name}.pt")


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
