"""MLflow tracking of pipeline runs; a tracking failure only warns, it never stops the pipeline."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import hashlib
import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient

    from faceage.params import FacesParams, Params

log = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
QUEUED_WORKSPACE = (".dvc", "tmp", "exps")
EVALUATE_ARTIFACTS = "evaluate"  # folder of the evaluation's files in the model's MLflow run
MODEL_IN_RUN = "model"  # name of the run's logged MLflow model
FLIP_TTA_TAG = "evaluated_with_flip_tta"  # whether the run's evaluation averaged mirror-image predictions
EPOCH_METRIC = "val_mae"  # logged once per training epoch, at the epoch's step
PROCESS_TAG = "process"  # host:pid of the process that logs a running run
# Opens the experiment in MLflow's UI as model training (its runs, charts), not as a GenAI app's evaluations.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
PROBE_SECONDS = 5  # a tracking server must answer /health within this, else tracking is skipped
# Their INFO lines narrate creating and migrating a store and validating a logged model's input example.
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "mlflow.pyfunc")
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def workspace_root(start: str | Path = ".") -> Path:
    """The user's repository, also from inside a queued DVC experiment's copy in ``.dvc/tmp/exps/``."""
    path = Path(start).resolve()
    parts = path.parts
    for index in range(len(parts) - len(QUEUED_WORKSPACE) + 1):
        if parts[index : index + len(QUEUED_WORKSPACE)] == QUEUED_WORKSPACE:
            return Path(*parts[:index])
    for folder in (path, *path.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return path


def tracking_uri(start: str | Path = ".") -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` at the workspace root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_root(start) / STORE_FILE}"


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer."""


@functools.cache
def server_answers(uri: str) -> bool:
    """Whether the store can be used: a tracking server must answer ``/health`` within :data:`PROBE_SECONDS`
    (warned once per process when it does not); other stores always can. For a server, MLflow's own
    retries are also cut to :data:`FAIL_FAST` unless set, so a server that stops answering later costs
    seconds, not minutes."""
    if not uri.startswith(("http://", "https://")):
        return True
    for name, value in FAIL_FAST.items():
        os.environ.setdefault(name, value)
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_SECONDS) as response:
            return response.status == 200
    except (OSError, ValueError) as error:
        log.warning("MLflow server %s does not answer (%s): runs are not tracked, the pipeline goes on", uri, error)
        return False


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive use of a SQLite store while it is created or changed in ways that race (its tables, a new
    experiment); other stores serialise such changes themselves."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(f"{uri.removeprefix('sqlite:///')}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mlflow_client(uri: str | None = None) -> MlflowClient:
    """A client of the store at ``uri`` (default :func:`tracking_uri`), created under :func:`store_lock`.

    Raises:
        TrackingUnavailable: the tracking server does not answer.
    """
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    if not server_answers(uri):
        raise TrackingUnavailable(f"MLflow server {uri} does not answer")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    with store_lock(uri):
        client = MlflowClient(uri)
        client.get_experiment_by_name("Default")  # a new SQLite store creates its tables here, under the lock
    return client


def dataset_fingerprint(paths: Iterable[str | Path]) -> str:
    """Short hash of the files that define the data a model sees (ingested manifest and split)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def git_commit(cwd: str | Path = ".") -> str:
    """The checked-out commit, or ``unknown`` outside git."""
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` to ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in metric names replaced by ``_``."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def finished_runs(experiment: str, fingerprint: str, uri: str | None = None) -> list:
    """Finished MLflow runs of ``experiment`` on the data with ``fingerprint``; empty, with a warning, if
    the store cannot be read."""
    try:
        client = mlflow_client(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        query = f"tags.dataset_fingerprint = '{fingerprint}' and attributes.status = 'FINISHED'"
        return client.search_runs([found.experiment_id], filter_string=query, max_results=10_000)
    except TrackingUnavailable:  # already warned
        return []
    except Exception as error:  # a broken store must not stop the pipeline
        log.warning("cannot read MLflow runs from %s: %s", uri or tracking_uri(), error)
        return []


# Finished, not deleted runs of an experiment with a dataset fingerprint, in MLflow's SQLite schema.
FINISHED_RUNS_SQL = """
SELECT runs.run_uuid FROM runs
JOIN experiments ON experiments.experiment_id = runs.experiment_id
JOIN tags ON tags.run_uuid = runs.run_uuid
WHERE experiments.name = ? AND runs.status = 'FINISHED' AND runs.lifecycle_stage = 'active'
AND tags.key = 'dataset_fingerprint' AND tags.value = ?
"""


def finished_run_ids(experiment: str, fingerprint: str, uri: str | None = None) -> list[str]:
    """Sorted ids of :func:`finished_runs`. A SQLite store is read directly: importing MLflow alone takes
    seconds, too long for a check that runs on every ``dvc repro``."""
    uri = uri or tracking_uri()
    if not uri.startswith("sqlite:///"):
        return sorted(run.info.run_id for run in finished_runs(experiment, fingerprint, uri))
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file():
        return []
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as store:
            return sorted(row[0] for row in store.execute(FINISHED_RUNS_SQL, (experiment, fingerprint)))
    except sqlite3.Error as error:  # a broken store must not stop the pipeline
        log.warning("cannot read MLflow runs from %s: %s", uri, error)
        return []


def download_artifact(run_id: str, path: str, folder: str | Path, uri: str | None = None) -> Path | None:
    """Copy one artifact of a run into ``folder``; ``None``, with a warning, if that fails."""
    try:
        return Path(mlflow_client(uri).download_artifacts(run_id, path, str(folder)))
    except TrackingUnavailable:  # already warned
        return None
    except Exception as error:  # a missing artifact must not stop the pipeline
        log.warning("cannot fetch %s of MLflow run %s: %s", path, run_id, error)
        return None


def champion_run(model_name: str, alias: str, uri: str | None = None) -> tuple[str, str] | None:
    """``(version, run_id)`` of the registered model version that carries ``alias``, if any."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return str(version.version), version.run_id


def register_with_alias(run_id: str, model_name: str, alias: str, uri: str | None = None) -> str:
    """Register the run's MLflow model (:data:`MODEL_IN_RUN`) as a new version of ``model_name`` and point
    ``alias`` at it; return the version."""
    import mlflow

    uri = uri or tracking_uri()
    client = mlflow_client(uri)
    mlflow.set_tracking_uri(uri)
    version = str(mlflow.register_model(f"runs:/{run_id}/{MODEL_IN_RUN}", model_name).version)
    client.set_registered_model_alias(model_name, alias, version)
    return version


class RunTracker:
    """One MLflow run, created anew in ``experiment`` or reopened by ``run_id`` (to go on logging an
    interrupted run); after the first MLflow error it only warns once."""

    def __init__(
        self,
        experiment: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
        uri: str | None = None,
    ):
        self.run_id: str | None = None
        self.client = None
        self.uri = uri or tracking_uri()
        self.logged_params: dict[str, str] = {}
        self.logged_epochs: set[int] = set()
        self.status = "RUNNING"
        if not server_answers(self.uri):
            return
        try:
            self._open(experiment, run_name, tags or {}, run_id)
        except Exception as error:  # any MLflow failure must leave the pipeline's own outputs intact
            self._disable(error)

    def _open(self, experiment: str | None, run_name: str | None, tags: dict[str, str], run_id: str | None) -> None:
        from mlflow.exceptions import MlflowException

        self.client = mlflow_client(self.uri)
        if run_id:
            try:
                self._reopen(run_id)
                return
            except MlflowException as error:
                if experiment is None:
                    raise
                log.warning("cannot reopen MLflow run %s (%s): logging to a new run", run_id, error)
        experiment_id = self._experiment_id(experiment)
        self.run_id = self.client.create_run(experiment_id, tags=tags, run_name=run_name).info.run_id

    def _reopen(self, run_id: str) -> None:
        """Go on logging ``run_id``, knowing which params and epochs it already holds."""
        run = self.client.get_run(run_id)
        if run.info.lifecycle_stage != "active":
            from mlflow.exceptions import MlflowException

            raise MlflowException(f"run {run_id} is deleted")
        self.run_id = run.info.run_id
        self.status = run.info.status
        self.logged_params = dict(run.data.params)
        self.logged_epochs = {m.step for m in self.client.get_metric_history(run_id, EPOCH_METRIC)}

    def _experiment_id(self, name: str) -> str:
        """The experiment's id, creating it if need be, kind :data:`EXPERIMENT_KIND`; a process that loses the race
        to create it uses the winner's."""
        from mlflow.exceptions import MlflowException

        with store_lock(self.uri):
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                if found.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
                    self.client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
                return found.experiment_id
            location = None
            if self.uri.startswith("sqlite:///"):
                location = (Path(self.uri.removeprefix("sqlite:///")).parent / ARTIFACTS_FOLDER).as_uri()
            try:
                return self.client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
            except MlflowException:  # RESOURCE_ALREADY_EXISTS from a server, when another client was first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
                return found.experiment_id

    def _disable(self, error: Exception) -> None:
        log.warning("MLflow tracking at %s failed, continuing without it: %s", self.uri, error)
        self.client, self.run_id = None, None

    def _call(self, action: Callable[[], Any]) -> None:
        if self.run_id is None:
            return
        try:
            action()
        except Exception as error:  # any MLflow failure must leave the pipeline's own outputs intact
            self._disable(error)

    @property
    def active(self) -> bool:
        """Whether the run is still being logged."""
        return self.run_id is not None

    def log_params(self, params: dict[str, Any]) -> None:
        """Log nested parameters as flat ``section.key`` names; a reopened run keeps the values it holds,
        with a warning for any that differ."""
        from mlflow.entities import Param

        flat = {key: str(value) for key, value in flatten(params).items()}
        changed = sorted(key for key, value in flat.items() if self.logged_params.get(key, value) != value)
        if changed and self.active:
            log.warning("MLflow run %s keeps its logged values of %s", self.run_id, ", ".join(changed))
        items = [Param(key, value) for key, value in flat.items() if key not in self.logged_params]
        self._call(lambda: self.client.log_batch(self.run_id, params=items))
        self.logged_params.update((item.key, item.value) for item in items)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Log one epoch's numbers at step ``row["epoch"]``, unless the run already holds that epoch."""
        if row["epoch"] in self.logged_epochs:
            return
        self.log_metrics({key: value for key, value in row.items() if key != "epoch"}, step=row["epoch"])
        self.logged_epochs.add(row["epoch"])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numeric metrics (nested dicts flattened, characters MLflow refuses replaced; others skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(metric_key(key), float(value), now, step or 0)
            for key, value in flatten(metrics).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        self._call(lambda: self.client.log_batch(self.run_id, metrics=items))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags."""
        from mlflow.entities import RunTag

        self._call(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_dataset(self, name: str, digest: str, source: str, rows: int, context: str = "training") -> None:
        """Record the data the run learns from as an MLflow dataset input."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps({"num_rows": rows}),
        )
        inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])]

        def log() -> None:
            from mlflow.exceptions import MlflowException

            # Runs of one experiment share a dataset record: two runs creating it at once race.
            with store_lock(self.uri):
                try:
                    self.client.log_inputs(self.run_id, datasets=inputs)
                except MlflowException:  # a server's other client created it first; now it exists
                    self.client.log_inputs(self.run_id, datasets=inputs)

        self._call(log)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), folder))

    def log_model(
        self, checkpoint: str | Path, faces: FacesParams, example_chip: np.ndarray, dataset: dict[str, str]
    ) -> None:
        """Log the checkpoint as the run's MLflow pyfunc model (:mod:`faceage.serving.pyfunc`), with what it learnt from."""

        def log() -> None:
            from faceage.serving.pyfunc import log_age_model

            log_age_model(self.run_id, self.uri, MODEL_IN_RUN, checkpoint, faces, example_chip, dataset)

        self._call(log)

    def mark_running(self) -> None:
        """Show the run as running in this process (a reopened one too: an interrupted training goes on)."""
        self.set_tags({PROCESS_TAG: this_process()})
        if self.status != "RUNNING":
            self._call(lambda: self.client.update_run(self.run_id, status="RUNNING"))

    def close_orphans(self) -> None:
        """Mark as failed the runs of this run's experiment that a process of this machine left running when
        it died (killed at once, it could not say so itself)."""

        def close() -> None:
            host = socket.gethostname()
            experiment = self.client.get_run(self.run_id).info.experiment_id
            query = f"attributes.status = 'RUNNING' and tags.{PROCESS_TAG} LIKE '{host}:%'"
            for run in self.client.search_runs([experiment], filter_string=query, max_results=1000):
                pid = int(run.data.tags[PROCESS_TAG].rpartition(":")[2])
                if run.info.run_id != self.run_id and not process_alive(pid):
                    log.warning("MLflow run %s was left running by a process that died: marked FAILED", run.info.run_id)
                    self.client.set_terminated(run.info.run_id, "FAILED")

        self._call(close)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run as ended."""
        self._call(lambda: self.client.set_terminated(self.run_id, status))


def this_process() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def ended_status(error: BaseException) -> str:
    """How a run ended by ``error`` is marked: KILLED when it was stopped (Ctrl-C, SIGTERM), else FAILED."""
    return "KILLED" if isinstance(error, KeyboardInterrupt | SystemExit) else "FAILED"


def end_run(run_id: str, status: str, uri: str | None = None) -> None:
    """Mark a run left behind (e.g. by an interrupted training that will not be resumed) as ended."""
    try:
        mlflow_client(uri).set_terminated(run_id, status)
    except TrackingUnavailable:  # already warned
        pass
    except Exception as error:  # a missing run must not stop the pipeline
        log.warning("cannot end MLflow run %s: %s", run_id, error)


def user_name() -> str:
    """Who runs: the tracking server's user name when one is set, else the system's ("unknown" in a
    container whose user has no name)."""
    try:
        return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


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
        "mlflow.user": user_name(),
        "mlflow.source.name": source,
        "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": git_commit(),
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


def start_member_run(parent: RunTracker, params: Params, name: str, run_id: str | None = None) -> RunTracker:
    """A run nested in the ensemble's run ``parent`` for its member ``name`` (trained with ``params``), or
    with ``run_id`` that run reopened; a run that tracks nothing when ``parent`` does not. It has no data set
    fingerprint, so only the ensemble's run is compared and ranked."""
    if not parent.active:
        return parent
    tags = {
        "mlflow.parentRunId": parent.run_id,
        "mlflow.user": user_name(),
        "mlflow.source.git.commit": git_commit(),
        "ensemble_member": name,
        "backbone": params.model.backbone,
        "head": params.model.head,
    }
    tracker = RunTracker(params.mlflow.experiment, f"{name}-{params.model.backbone}", tags, run_id, parent.uri)
    tracker.mark_running()
    tracker.log_params({k: v for k, v in asdict(params).items() if k not in ("demo", "members")})
    return tracker
