"""Stage train: fit the model on the train split, keep the best epoch, and log the run and the model
(as a servable MLflow model, see faceage.serving) to MLflow."""

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from faceage.ingest import MANIFEST_FILE, load_images, load_manifest
from faceage.losses import UNKNOWN_GENDER
from faceage.params import load_params
from faceage.plots import learning_curves
from faceage.stage import run_stage, write_json
from faceage.tracking import dataset_fingerprint, end_run, start_pipeline_run
from faceage.train import (
    ResumeFile,
    headline_metrics,
    history_table,
    split_ids,
    train_model,
    training_fingerprint,
)

INGESTED = "data/ingested"
SPLIT_FILE = "data/split.csv"
MODEL = "models/model.pt"
STATE = "models/resume/train_state.pt"
METRICS = "metrics/train.json"  # headline figures, tracked by DVC and charted by MLflow
REPORT = "reports/train.json"  # every figure, and the MLflow run
HISTORY = "plots/train/history.csv"
CURVES = "plots/train/learning_curves.png"


def main() -> None:
    params = load_params()
    manifest, images, split = load_manifest(INGESTED), load_images(INGESTED), pd.read_csv(SPLIT_FILE)
    data = (images, manifest["age"].to_numpy(), manifest["gender"].fillna(UNKNOWN_GENDER).to_numpy(), split)
    settings = (params.model, params.train, params.augment, (params.data.min_age, params.data.max_age))
    resume = ResumeFile(STATE, training_fingerprint(*data, *settings))
    if resume.abandoned_run_id:
        end_run(resume.abandoned_run_id, "KILLED")
    fingerprint = dataset_fingerprint([Path(INGESTED) / MANIFEST_FILE, SPLIT_FILE])
    tracker = start_pipeline_run(params, fingerprint, "stages/train.py", run_id=resume.run_id)
    tracker.log_dataset(Path(params.data.source).name, fingerprint, params.data.source, len(manifest))
    resume.run_id = tracker.run_id
    tracker.log_params({k: v for k, v in asdict(params).items() if k != "demo"})
    for row in resume.history:  # epochs logged before an interruption are kept; any the run lacks are added
        tracker.log_epoch(row)
    try:
        result = train_model(*data, *settings, resume=resume, on_epoch_end=tracker.log_epoch)
    except BaseException:
        tracker.finish("FAILED")
        raise
    Path(MODEL).parent.mkdir(parents=True, exist_ok=True)
    torch.save({**result.checkpoint, "faces": asdict(params.faces), "mlflow_run_id": tracker.run_id}, MODEL)
    write_json({**result.summary, "mlflow_run_id": tracker.run_id}, REPORT)
    headline = headline_metrics(result.summary)
    write_json(headline, METRICS)
    history_table(result.history, result.summary["best_epoch"]).to_csv(HISTORY, index=False)
    learning_curves(result.history, result.summary["best_epoch"], CURVES)
    tracker.log_metrics({**headline, "parameters": result.summary["parameters"], "epochs_run": len(result.history)})
    for path, folder in ((REPORT, "reports"), (HISTORY, "plots"), (CURVES, "plots")):
        tracker.log_artifact(path, folder)
    tracker.log_model(MODEL, params.faces, images[split_ids(split, "val")[0]])
    tracker.finish()


if __name__ == "__main__":
    run_stage(main)
