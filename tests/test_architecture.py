"""The package's shape: small modules, sub-packages in layers, and stages that read only what they need."""

import ast
from pathlib import Path

from test_dvc_deps import REPO, imported_files

# Each layer imports only the layers before it: the plain modules at the package's top, then the sub-packages.
LAYERS = ("", "data", "model", "tracking", "training", "evaluation", "serving")
ENTRY_POINTS = {"faceage/cli.py"}  # the command line sits on every layer
MAX_LINES = 350


def package_modules() -> list[Path]:
    return sorted((REPO / "faceage").rglob("*.py"))


def layer(path: str) -> str:
    parts = Path(path).relative_to("faceage").parts
    return parts[0] if len(parts) > 1 else ""


def test_no_module_is_over_350_lines():
    long = {
        path.relative_to(REPO).as_posix(): n
        for path in package_modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_each_sub_package_imports_only_the_layers_before_it():
    wrong = []
    for path in package_modules():
        name = path.relative_to(REPO).as_posix()
        if name in ENTRY_POINTS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("faceage."):
                parts = node.module.split(".")
                target = parts[1] if (REPO / "faceage" / parts[1]).is_dir() else ""
                if LAYERS.index(target) > LAYERS.index(layer(name)):
                    wrong.append(f"{name} imports {node.module}")
    assert wrong == []


def test_the_runs_stage_reads_at_most_5_modules_of_the_package():
    modules = {
        f for f in imported_files("stages/runs.py") if f.startswith("faceage/") and not f.endswith("__init__.py")
    }
    assert len(modules) <= 5, sorted(modules)
