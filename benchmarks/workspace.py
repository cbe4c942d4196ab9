"""A throw-away git + DVC copy of the repository's working tree, to run the real pipeline in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

WHOLE_SECTIONS = ("test_sources", "members")  # maps of named entries: set as a whole


def tool_env(**extra: str) -> dict[str, str]:
    """This environment with its own tools (dvc, python) first on PATH and MLflow's default store."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def copy_worktree(source: Path, destination: Path, params: dict[str, dict[str, Any]] | None = None) -> Path:
    """Copy the files git does not ignore from ``source`` into ``destination``, apply ``params`` changes
    (see :func:`set_params`) and commit it all there."""
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listing, cwd=source, capture_output=True, text=True, check=True).stdout.splitlines()
    for name in (name for name in files if (source / name).is_file()):
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, destination / name)
    set_params(destination, params or {})
    identity = ["-c", "user.name=faceage", "-c", "user.email=faceage@localhost"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", *identity, "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=destination, check=True, capture_output=True)
    return destination


def set_params(repo: Path, changes: dict[str, dict[str, Any]]) -> None:
    """Update sections of ``params.yaml`` in ``repo``, e.g. ``{"train": {"epochs": 1}}``; the sections of named
    entries (``test_sources``, ``members``) are replaced as a whole, so that, e.g., the data set's own test sources
    replace the demo's."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        if section in WHOLE_SECTIONS:
            params[section] = values
        else:
            params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
