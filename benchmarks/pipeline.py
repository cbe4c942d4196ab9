"""The pipeline's own figures: ``dvc repro`` from an empty cache, then the speed of its trained model."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.workspace import tool_env
from faceage.params import MAIN_MEMBER, load_params
from faceage.stage import pipeline_paths


def repro(repo: Path, log: Path, before: Callable[[], object] | None = None) -> dict:
    """Run ``dvc repro`` in ``repo`` (a fresh copy, so the cache is empty); its wall time and reports. With
    ``before``, the pipeline first runs up to ``split``, then ``before()`` (not timed), then the rest.

    The stages import the copy's own ``faceage`` package, not the one installed from the working tree,
    which may change while the benchmark runs.
    """
    env = tool_env(PYTHONPATH=str(repo))

    def run(*targets: str) -> float:
        started = time.perf_counter()
        command = ["dvc", "repro", *targets]
        with log.open("a") as output:
            result = subprocess.run(command, cwd=repo, env=env, stdout=output, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-20:])
            raise RuntimeError(f"dvc repro failed in {repo} (log: {log}):\n{tail}")
        return time.perf_counter() - started

    log.write_text("")
    if before is None:
        seconds = run()
    else:
        seconds = run("split")
        before()
        seconds += run()
    paths = pipeline_paths(repo)
    train = json.loads(paths["train_report"].read_text())
    main = train.get("members", {}).get(MAIN_MEMBER, train)  # the network the baseline loop trains
    evaluation = json.loads(paths["evaluate_report"].read_text())
    return {
        "dvc_repro_seconds": round(seconds, 1),
        "best_val_mae": train["best_val_mae"],
        "train_seconds": train["seconds"],  # every network of the model
        "epochs_run": main["epochs_run"],
        "main_train_seconds": main["seconds"],
        "finetune_images_per_second": main["finetune_images_per_second"],
        "members": {
            name: {key: member[key] for key in ("backbone", "best_val_mae", "epochs_run", "seconds")}
            for name, member in train.get("members", {}).items()
        },
        "intervals": train["intervals"],  # the calibration: spread chosen, correction, quantiles
        "batch_inference_images_per_second": evaluation["inference"]["images_per_second"],
        "flip_tta": evaluation["inference"]["flip_tta"],
        "test": evaluation["test"],
        "sources": {name: evaluation[name] for name in evaluation if name not in ("test", "val", "inference")},
        "source_ingest": {  # each test source's images, and those kept (a face found, when aligned)
            name: {"files": report["files"], "kept": report["outcomes"]["kept"]}
            for name in load_params(repo / "params.yaml").test_sources
            for report in [json.loads((paths["test_source_reports"] / f"{name}.json").read_text())]
        },
    }
