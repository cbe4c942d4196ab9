"""DVC must know every module a stage runs: each stage's deps cover its script's imports, transitively."""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "faceage"
LOADED_BY_PATH = {"faceage/serving/pyfunc.py": {"faceage/serving/mlflow_model.py"}}  # files used by path, not imported


def module_files(name: str) -> list[str]:
    """The package files that importing module ``name`` runs: its own (``x.py`` or ``x/__init__.py``) and the
    ``__init__.py`` of every package above it; none outside the package or for a name that is no module."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return []
    path = Path(*parts)
    own = path / "__init__.py" if (REPO / path).is_dir() else path.with_suffix(".py")
    if not (REPO / own).is_file():
        return []
    packages = [Path(*parts[:end], "__init__.py") for end in range(1, len(parts))]
    return [p.as_posix() for p in (own, *packages) if (REPO / p).is_file()]


def imported_files(path: str) -> set[str]:
    """Package files that ``path`` imports, also inside functions, and those that import in turn."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += LOADED_BY_PATH.get(current, ())
        for node in ast.walk(ast.parse((REPO / current).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                todo += module_files(name)
    return seen


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_runs(name):
    stage = STAGES[name].get("do", STAGES[name])  # a foreach stage's every instance runs the same code
    script = next(word for word in stage["cmd"].split() if word.endswith(".py"))
    deps = set(stage["deps"])
    missing = sorted(imported_files(script) - deps)
    assert not missing, f"stage {name} runs {missing} but does not list them in deps"
    stale = sorted(d for d in deps if d.endswith(".py") and not (REPO / d).is_file())
    assert not stale, f"stage {name} lists files that do not exist: {stale}"


def test_the_check_sees_imports_inside_functions_and_transitive_ones():
    files = imported_files("stages/train.py")
    assert {
        "faceage/serving/pyfunc.py",
        "faceage/serving/mlflow_model.py",
        "faceage/data/faces.py",
        "faceage/weights.py",
    } <= files
