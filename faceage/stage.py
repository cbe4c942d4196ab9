"""What every stage script shares: logging, one-line errors, JSON output."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from faceage.errors import FaceageError


def write_json(data: dict, path: str | Path) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    """Write ``table`` as CSV without its index, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


def stop_on_sigterm() -> None:
    """Turn SIGTERM (a scheduler or ``kill``) into :class:`SystemExit`, so a stage ends as on Ctrl-C: its
    ``finally`` and ``except`` blocks run (an MLflow run is marked as killed) instead of dying on the spot."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``: log to stderr and turn a :class:`FaceageError` into a one-line exit. Progress
    bars (ours and MLflow's) show only on terminals; a log gets a line per epoch instead."""
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    stop_on_sigterm()
    try:
        main()
    except FaceageError as error:
        sys.exit(f"error: {error}")
