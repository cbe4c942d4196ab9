"""Where MLflow keeps runs and how to reach it: the store's address, a client, locks against races on a
SQLite store, and queries of finished runs. A tracking failure only warns, it never stops the pipeline."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

STORE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
QUEUED_WORKSPACE = (".dvc", "tmp", "exps")
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
