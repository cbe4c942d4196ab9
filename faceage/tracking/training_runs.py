"""The MLflow runs of a training: the model's run, a run nested in it for each member, each reopened when an
interrupted training resumes and ended however the training ends."""

from __future__ import annotations

import contextlib
import getpass
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from faceage.tracking.runs import RunTracker, end_run, ended_status

if TYPE_CHECKING:
    from faceage.params import Params


def git_commit(cwd: str | Path = ".") -> str:
    """The checked-out commit, or ``unknown`` outside git."""
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def user_name() -> str:
    """Who runs: the tracking server's user name when one is set, else the system's ("unknown" in a
    container whose user has no name)."""
    try:
        return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def source_tags(source: str) -> dict[str, str]:
    """MLflow's standard tags of who ran which code: the user, ``source`` (the script that trains), the commit."""
    return {
        "mlflow.user": user_name(),
        "mlflow.source.name": source,
        "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": git_commit(),
    }


def backbone_label(params: Params) -> str:
    """The model's backbone, or an ensemble's backbones (the main network's, then its members' by name) joined
    by ``+``: how runs are tagged, named and ranked."""
    members = (params.member(name).model.backbone for name in sorted(params.members))
    return "+".join([params.model.backbone, *members])


def start_pipeline_run(params: Params, fingerprint: str, source: str, run_id: str | None = None) -> RunTracker:
    """A new run of ``params.mlflow.experiment`` named after the backbone (and DVC experiment), with MLflow's
    standard user and source tags (``source``: the script that trains) and a description, and tagged so runs
    can be grouped and compared; or, with ``run_id``, that run reopened."""
    model, train = params.model, params.train
    dvc_experiment = os.environ.get("DVC_EXP_NAME", "")
    weights = "pretrained" if model.pretrained else "from scratch"
    description = (
        f"{model.backbone} with a {model.head} head, {weights}, {model.input_size} px, "
        f"{train.head_epochs} head + {train.epochs} fine-tuning epochs, on data {fingerprint}"
        + (f"; an ensemble with {', '.join(sorted(params.members))}" if params.members else "")
        + (f"; DVC experiment {dvc_experiment}" if dvc_experiment else "")
    )
    tags = {
        **source_tags(source),
        "mlflow.note.content": description,
        "backbone": backbone_label(params),
        "head": model.head,
        "dataset_fingerprint": fingerprint,
        "dvc_experiment": dvc_experiment,
    }
    name = "-".join(part for part in (backbone_label(params), model.head, dvc_experiment) if part)
    tracker = RunTracker(params.mlflow.experiment, run_name=name, tags=tags, run_id=run_id)
    tracker.mark_running()
    tracker.close_orphans()
    return tracker


def start_member_run(
    parent: RunTracker, params: Params, name: str, source: str, run_id: str | None = None
) -> RunTracker:
    """A run nested in the model's run ``parent`` for its member ``name`` (trained with ``params``), or
    with ``run_id`` that run reopened; a run that tracks nothing when ``parent`` does not. It has no data set
    fingerprint, so only the ensemble's run is compared and ranked."""
    if not parent.active:
        return parent
    tags = {
        **source_tags(source),
        "mlflow.parentRunId": parent.run_id,
        "ensemble_member": name,
        "backbone": params.model.backbone,
        "head": params.model.head,
    }
    tracker = RunTracker(params.mlflow.experiment, f"{name}-{params.model.backbone}", tags, run_id, parent.uri)
    tracker.mark_running()
    tracker.log_params({k: v for k, v in asdict(params).items() if k not in ("demo", "members")})
    return tracker


class Resumable(Protocol):
    """A saved training state's record of its MLflow run (:class:`~faceage.training.resume.ResumeFile`)."""

    run_id: str | None
    abandoned_run_id: str | None
    history: list[dict]


@contextlib.contextmanager
def resumable_run(resume: Resumable, start: Callable[[str | None], RunTracker]) -> Iterator[RunTracker]:
    """The MLflow run of one network's training, for the main network and every member alike: the run that an
    interrupted training of the same setup started (reopened by ``start(run_id)``), else a new one
    (``start(None)``); a run left by a training of another setup is marked KILLED. Epochs the saved state has
    been through and the run lacks are logged. The run is FINISHED when the block ends, else KILLED (Ctrl-C,
    SIGTERM) or FAILED."""
    if resume.abandoned_run_id:
        end_run(resume.abandoned_run_id, "KILLED")
    tracker = start(resume.run_id)
    resume.run_id = tracker.run_id
    for row in resume.history:
        tracker.log_epoch(row)
    try:
        yield tracker
    except BaseException as error:
        tracker.finish(ended_status(error))
        raise
    tracker.finish()
