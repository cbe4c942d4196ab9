"""Stage train: fine-tune the backbone on the train split and save the best checkpoint."""

from pathlib import Path

import pandas as pd
import torch

from faceage.ingest import load_images, load_manifest
from faceage.params import load_params
from faceage.plots import learning_curves
from faceage.stage import run_stage, write_json
from faceage.train import train_model

INGESTED = "data/ingested"
SPLIT_FILE = "data/split.csv"
MODEL = "models/model.pt"
REPORT = "metrics/train.json"
CURVES = "plots/train/learning_curves.png"


def main() -> None:
    params = load_params()
    ages = load_manifest(INGESTED)["age"].to_numpy()
    result = train_model(load_images(INGESTED), ages, pd.read_csv(SPLIT_FILE), params.model, params.train)
    Path(MODEL).parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.checkpoint, MODEL)
    write_json(result.summary, REPORT)
    learning_curves(result.history, CURVES)


if __name__ == "__main__":
    run_stage(main)
