"""What every stage script shares: the pipeline's paths, logging, one-line errors, JSON and CSV output."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from faceage.errors import FaceageError

log = logging.getLogger(__name__)
PIPELINE_FILE = "dvc.yaml"
ENVIRONMENT_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def pipeline_paths(root: str | Path = ".") -> dict[str, Path]:
    """The paths of the pipeline's data, model, reports and plots by name: the ``paths`` among the ``vars`` of
    ``dvc.yaml`` at ``root``, the one place they are written (its stages name them as ``${paths.NAME}``)."""
    import yaml

    file = Path(root) / PIPELINE_FILE
    if not file.is_file():
        raise FaceageError(f"no {PIPELINE_FILE} in {Path(root).resolve()}: run this in the faceage project's folder")
    for entry in yaml.safe_load(file.read_text()).get("vars", []):
        if isinstance(entry, dict) and "paths" in entry:
            return {name: Path(root) / value for name, value in entry["paths"].items()}
    raise FaceageError(f"{file} names no paths among its vars")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` in an :class:`OSError` raised while writing it that names no file (a full disk's does not)."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


def write_json(data: dict, path: str | Path) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        path.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    """Write ``table`` as CSV without its index, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path):
        table.to_csv(path, index=False)


def stop_on_sigterm() -> None:
    """Turn SIGTERM (a scheduler or ``kill``) into :class:`SystemExit`, so a stage ends as on Ctrl-C: its
    ``finally`` and ``except`` blocks run (an MLflow run is marked as killed) instead of dying on the spot.
    Processes forked from the stage get SIGTERM's default back at once: a pool stops its workers with SIGTERM,
    and a worker blocked on a lock could not run a Python handler, so the pool would wait for it forever.
    SIGTERM is blocked across each fork, so one sent to a child before its reset (a pool that ends before a
    worker got to run) waits in the kernel and ends the child once the default is back; Python would otherwise
    drop it while the child starts, and the pool would wait for that worker forever."""
    stage = os.getpid()
    sigterm = {signal.SIGTERM}

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != stage:  # a child forked without the hooks below (none known): die as the default does
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        sys.exit(128 + signum)

    def default_in_child() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, sigterm)

    signal.signal(signal.SIGTERM, stop)
    os.register_at_fork(
        before=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, sigterm),
        after_in_parent=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, sigterm),
        after_in_child=default_in_child,
    )


def forget_later_metrics(stage: str) -> None:
    """Remove the DVC metrics of the stages that run after ``stage`` (which failed): they belong to an earlier
    run, and ``dvc exp show`` would show them as the failed experiment's figures."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo() as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        failed = next(node for node in graph if node.addressing == stage)
        later = [out for node in nx.ancestors(graph, failed) for out in node.outs if out.metric]
        for out in later:
            path = Path(out.fs_path)
            if path.is_file():
                path.unlink()
                log.info("removed %s: its figures are an earlier run's", os.path.relpath(path))


def environment_fault(error: BaseException) -> str | None:
    """The one line for a fault of the machine rather than of the stage (no space left, a read-only or
    forbidden path), naming the path where the error has one; ``None`` for any other error."""
    if not isinstance(error, OSError) or error.errno not in ENVIRONMENT_FAULTS:
        return None
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or os.strerror(error.errno)}"


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``: log to stderr and turn a :class:`FaceageError` or an :func:`environment_fault`
    into a one-line exit (non-zero, so DVC records none of its outputs). Progress bars (ours and MLflow's)
    show only on terminals; a log gets a line per epoch instead."""
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    stop_on_sigterm()
    try:
        main()
    except BaseException as error:
        if os.environ.get("DVC_STAGE"):  # run by dvc repro or dvc exp run
            try:
                forget_later_metrics(os.environ["DVC_STAGE"])
            except Exception as failure:  # the stage's own error is the one to report
                log.warning("cannot remove the metrics of later stages: %s", failure)
        if isinstance(error, FaceageError):
            sys.exit(f"error: {error}")
        fault = environment_fault(error)
        if fault:
            sys.exit(f"error: {fault}")
        raise
