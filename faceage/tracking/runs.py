"""One MLflow run as the pipeline logs it: created or reopened, logged to, and ended, also when the process
that ran it died; a tracking failure only warns, it never stops the pipeline."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from faceage.tracking.store import (
    ARTIFACTS_FOLDER,
    TrackingUnavailable,
    mlflow_client,
    server_answers,
    store_lock,
    tracking_uri,
)

log = logging.getLogger(__name__)

EVALUATE_ARTIFACTS = "evaluate"  # folder of the evaluation's files in the model's MLflow run
FLIP_TTA_TAG = "evaluated_with_flip_tta"  # whether the run's evaluation averaged mirror-image predictions
EPOCH_METRIC = "val_mae"  # logged once per training epoch, at the epoch's step
PROCESS_TAG = "process"  # host:pid of the process that logs a running run
# Opens the experiment in MLflow's UI as model training (its runs, charts), not as a GenAI app's evaluations.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


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

    def call(self, action: Callable[[], Any]) -> None:
        """Run ``action`` (MLflow calls on this run) unless tracking is off; its failure turns tracking off."""
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
        self.call(lambda: self.client.log_batch(self.run_id, params=items))
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
        self.call(lambda: self.client.log_batch(self.run_id, metrics=items))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags."""
        from mlflow.entities import RunTag

        self.call(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

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

        self.call(log)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        self.call(lambda: self.client.log_artifact(self.run_id, str(path), folder))

    def mark_running(self) -> None:
        """Show the run as running in this process (a reopened one too: an interrupted training goes on)."""
        self.set_tags({PROCESS_TAG: this_process()})
        if self.status != "RUNNING":
            self.call(lambda: self.client.update_run(self.run_id, status="RUNNING"))

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

        self.call(close)

    @contextlib.contextmanager
    def system_metrics(self, seconds: float) -> Iterator[None]:
        """While the block runs, MLflow samples this machine's CPU, memory, disk, network and (with
        ``nvidia-ml-py``) GPU use every ``seconds`` into the run's ``system/*`` metrics; 0 samples nothing."""
        if not seconds or not self.active:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=seconds, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run as ended."""
        self.call(lambda: self.client.set_terminated(self.run_id, status))


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
