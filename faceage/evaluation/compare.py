"""Compare runs on the same data: validation MAE picks each backbone's best run, test MAE is reported,
and a paired test on identical test images says whether the current run really differs from the best
other one."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from faceage.evaluation.metrics import bootstrap_interval
from faceage.params import Params
from faceage.report_sections import CompareParams
from faceage.tracking.registry import champion_run, register_with_alias
from faceage.tracking.runs import EVALUATE_ARTIFACTS, FLIP_TTA_TAG, RunTracker, flatten, metric_key
from faceage.tracking.store import download_artifact, finished_runs
from faceage.tracking.training_runs import backbone_label

log = logging.getLogger(__name__)

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"
SOURCE_FIGURES = ("mae", "age_group_accuracy", "reference_mae", "reference_age_group_accuracy")
CHAMPION = "champion"  # registry alias of the promoted model


def leaderboard_entry(
    run_id: str | None, metrics: dict, params: dict[str, str], tags: dict[str, str], buckets: list[str], cs_key: str
) -> dict | None:
    """A leaderboard row from a run's headline metrics, flat as MLflow holds them (``test.mae``, ...), its
    parameters as logged (strings, ``model.backbone``, ...) and tags; ``None`` for a run never evaluated.
    ``cs_key`` names the CS@k metric (``cs5`` for k = 5).

    Besides the figures, a row shows what makes runs comparable: epochs, pretrained weights, input size,
    experiments, and which validation MAE it is: ``val_mae`` as evaluated (with flip TTA when ``flip_tta``),
    ``val_mae_in_training`` as training selected the epoch by (no TTA, ``metrics/train.json``'s). ``sources``
    holds, per test source the run was evaluated on, its MAE and age-group accuracy beside dlib's untouched
    model's."""
    if "val.mae" not in metrics or "test.mae" not in metrics:
        return None
    parameters = metrics.get("parameters")
    sources = sorted({key.split(".")[1] for key in metrics if key.startswith("test_sources.")})
    return {
        "run_id": run_id,
        "backbone": tags.get("backbone") or params.get("model.backbone", "unknown"),
        "pretrained": params.get("model.pretrained") == "True",
        "input_size": _integer(params.get("model.input_size")),
        "epochs": f"{params.get('train.head_epochs', '?')}+{params.get('train.epochs', '?')}",
        "experiment": params.get("mlflow.experiment"),
        "dvc_experiment": tags.get("dvc_experiment") or None,
        "val_mae": metrics["val.mae"],
        "flip_tta": tags.get(FLIP_TTA_TAG) == "True",
        "val_mae_in_training": metrics.get("best_val_mae"),
        "test_mae": metrics["test.mae"],
        "test_mae_ci": [metrics.get("test.mae_low"), metrics.get("test.mae_high")],
        "test_rmse": metrics.get("test.rmse"),
        "test_cs": metrics.get(f"test.{cs_key}"),
        "test_bucket_mae": {label: metrics.get(metric_key(f"test_bucket_mae.{label}")) for label in buckets},
        "sources": {
            name: {key: metrics.get(f"test_sources.{name}.{key}") for key in SOURCE_FIGURES} for name in sources
        },
        "parameters": _integer(parameters),
        "train_seconds": metrics.get("train_seconds"),
        "inference_images_per_second": metrics.get("inference_images_per_second"),
    }


def _integer(value: object) -> int | None:
    return None if value is None else int(float(value))


def entry_from_reports(
    run_id: str | None, metrics: list[dict], params: Params, buckets: list[str], cs_key: str
) -> dict | None:
    """The leaderboard row of the current run, from its metric files and parameters, read through the same
    names as MLflow holds them."""
    flat = {metric_key(key): value for report in metrics for key, value in flatten(report).items()}
    logged = {key: str(value) for key, value in flatten(asdict(params)).items()}
    tags = {
        "backbone": backbone_label(params),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
        FLIP_TTA_TAG: str(params.evaluate.flip_tta),
    }
    return leaderboard_entry(run_id, flat, logged, tags, buckets, cs_key)


def leaderboard(entries: list[dict]) -> list[dict]:
    """Each backbone's run with the lowest validation MAE, best first, with its rank; test MAE never decides."""
    best: dict[str, dict] = {}
    for entry in entries:
        current = best.get(entry["backbone"])
        if current is None or entry["val_mae"] < current["val_mae"]:
            best[entry["backbone"]] = entry
    ranked = sorted(best.values(), key=lambda entry: entry["val_mae"])
    return [{"rank": rank, **entry} for rank, entry in enumerate(ranked, start=1)]


def paired_comparison(
    current: pd.DataFrame, other: pd.DataFrame, resamples: int, seed: int, confidence: float
) -> dict | None:
    """Compare absolute errors of two runs on the test images both predicted (``id``, ``error`` columns).

    The difference is current minus other MAE (negative: the current run is better), with a paired
    percentile bootstrap interval and the Wilcoxon signed-rank test's p-value. The verdict is
    ``better`` or ``worse`` when the interval excludes 0, else ``no significant difference``.
    ``None`` when the runs share no test image.
    """
    pairs = current[["id", "error"]].merge(other[["id", "error"]], on="id", suffixes=("_current", "_other"))
    if pairs.empty:
        return None
    differences = pairs["error_current"].abs().to_numpy() - pairs["error_other"].abs().to_numpy()
    low, high = bootstrap_interval(lambda d, _: d.mean(axis=-1), differences, differences, resamples, seed, confidence)
    p_value = float(wilcoxon(differences).pvalue) if np.any(differences != 0) else 1.0
    verdict = BETTER if high < 0 else WORSE if low > 0 else NO_DIFFERENCE
    return {
        "images": len(pairs),
        "mae_difference": round(float(differences.mean()), 4),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
        "confidence": confidence,
        "wilcoxon_p_value": round(p_value, 6),
        "verdict": verdict,
    }


def other_runs(
    experiment: str, fingerprint: str, current_run_id: str | None, buckets: list[str], cs_key: str
) -> list[dict]:
    """Entries of the evaluated MLflow runs on the same data, the current run left out."""
    return [
        entry
        for run in finished_runs(experiment, fingerprint)
        if run.info.run_id != current_run_id
        and (
            entry := leaderboard_entry(
                run.info.run_id, run.data.metrics, run.data.params, run.data.tags, buckets, cs_key
            )
        )
    ]


def run_predictions(run_id: str) -> pd.DataFrame | None:
    """The predictions that the evaluation of MLflow run ``run_id`` logged; ``None``, with a warning, if
    they cannot be read."""
    with tempfile.TemporaryDirectory() as folder:
        path = download_artifact(run_id, f"{EVALUATE_ARTIFACTS}/predictions.csv", folder)
        return pd.read_csv(path) if path is not None else None


def compare_with(rival_run_id: str, predictions: pd.DataFrame, split: str, params: CompareParams) -> dict | None:
    """Paired test of ``predictions`` against those that the MLflow run ``rival_run_id`` logged, on ``split``."""
    rival_predictions = run_predictions(rival_run_id)
    if rival_predictions is None:
        return None
    result = paired_comparison(
        predictions[predictions["split"] == split],
        rival_predictions[rival_predictions["split"] == split],
        params.bootstrap_resamples,
        params.seed,
        params.confidence,
    )
    return None if result is None else {"against_run": rival_run_id, "split": split, **result}


def verdict_against_best_other(others: list[dict], predictions: pd.DataFrame, params: CompareParams) -> dict | None:
    """Paired test on the test split of ``predictions`` against the other run best on validation (whichever ran
    last); ``None`` with no other run, or none whose predictions can be read."""
    if not others:
        return None
    rival = min(others, key=lambda entry: entry["val_mae"])
    significance = compare_with(rival["run_id"], predictions, "test", params)
    return None if significance is None else {**significance, "against_backbone": rival["backbone"]}


def promotion_decision(evidence: dict | None, has_champion: bool) -> tuple[bool, str]:
    """Whether to make the current run the champion: always when there is none, else only when it is
    significantly better than the champion on the validation split."""
    if not has_champion:
        return True, "no champion yet"
    if evidence is None:
        return False, "no validation predictions shared with the champion"
    interval = f"{evidence['mae_difference']:+.3f} years [{evidence['ci_low']:+.3f}, {evidence['ci_high']:+.3f}]"
    if evidence["verdict"] == BETTER:
        return True, f"validation MAE {interval} against the champion: significantly better"
    return False, f"validation MAE {interval} against the champion: {evidence['verdict']}"


def promote_if_better(run_id: str, predictions: pd.DataFrame, params: CompareParams) -> dict:
    """Register the run and move the ``champion`` alias to it when :func:`promotion_decision` says so.

    The decision and its evidence are returned and set as tags of the run; a registry failure is
    reported as a decision not to promote.
    """
    try:
        current = champion_run(params.model_name, CHAMPION)
        if current is not None and current[1] == run_id:
            return {"promoted": False, "reason": "already the champion", "champion_version": current[0]}
        evidence = compare_with(current[1], predictions, "val", params) if current else None
        promote, reason = promotion_decision(evidence, current is not None)
        version = register_with_alias(run_id, params.model_name, CHAMPION) if promote else None
    except Exception as error:  # the registry is optional: its failure must not stop the pipeline
        log.warning("model registry unavailable: %s", error)
        return {"promoted": False, "reason": f"model registry unavailable: {error}"}
    decision = {
        "promoted": promote,
        "reason": reason,
        "previous_champion_version": current[0] if current else None,
        "champion_version": version if promote else (current[0] if current else None),
        "evidence": evidence,
    }
    RunTracker(run_id=run_id).set_tags({"champion_decision": reason, "promoted": str(promote).lower()})
    return decision


def promote_leaderboard_best(
    board: list[dict], current_run_id: str, predictions: pd.DataFrame, params: CompareParams
) -> dict | None:
    """:func:`promote_if_better` for the leaderboard's first run (validation decides), which need not be the
    current one; ``None`` when its predictions cannot be read."""
    best = board[0]["run_id"]
    if best != current_run_id:
        predictions = run_predictions(best)
        if predictions is None:
            return None
    return {"candidate_run": best, **promote_if_better(best, predictions, params)}


def console_summary(table: pd.DataFrame, significance: dict | None, promotion: dict | None) -> str:
    """The leaderboard, the verdict against the best other run and the registry's decision, for a terminal."""
    runs = f"{len(table)} run{'s' * (len(table) != 1)}"
    lines = [f"Leaderboard ({runs} on this data, ranked by validation MAE):", table.to_string(index=False)]
    if significance is None:
        lines.append("Verdict: no other run on this data to compare with.")
    else:
        interval = f"[{significance['ci_low']:+.3f}, {significance['ci_high']:+.3f}]"
        lines.append(
            f"Verdict against {significance['against_backbone']} on {significance['images']} test images: "
            f"{significance['verdict']} (MAE difference {significance['mae_difference']:+.3f}, "
            f"{significance['confidence']:.0%} interval {interval})"
        )
    if promotion is not None:
        lines.append(f"Registry: {'promoted' if promotion['promoted'] else 'not promoted'} ({promotion['reason']})")
    return "\n".join(lines)
