"""Stage evaluate: predict the validation and test splits and write metrics, predictions and plots."""

import pandas as pd

from faceage.evaluate import evaluation_report, predict_splits
from faceage.inference import load_checkpoint
from faceage.ingest import load_images, load_manifest
from faceage.params import load_params
from faceage.plots import bucket_mae
from faceage.runtime import select_device
from faceage.stage import run_stage, write_json

INGESTED = "data/ingested"
SPLIT_FILE = "data/split.csv"
MODEL = "models/model.pt"
PREDICTIONS = "data/predictions.csv"
REPORT = "metrics/evaluate.json"
BUCKET_PLOT = "plots/evaluate/bucket_mae.png"


def main() -> None:
    params = load_params().evaluate
    device = select_device()
    model, checkpoint = load_checkpoint(MODEL, device)
    manifest = load_manifest(INGESTED)
    predictions = predict_splits(
        model, checkpoint, load_images(INGESTED), manifest, pd.read_csv(SPLIT_FILE), params, device
    )
    predictions.to_csv(PREDICTIONS, index=False)
    report = evaluation_report(predictions, params)
    write_json(report, REPORT)
    bucket_mae({name: summary["buckets"] for name, summary in report.items()}, BUCKET_PLOT)


if __name__ == "__main__":
    run_stage(main)
