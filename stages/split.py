"""Stage split: reproducible, age-stratified train/val/test split of the ingested images."""

from faceage.data.manifest import load_manifest
from faceage.data.split import SPLITS, split_manifest, split_report
from faceage.params import load_params
from faceage.plots import age_histogram
from faceage.stage import run_stage, write_csv, write_json

INGESTED = "data/ingested"
SPLIT_FILE = "data/split.csv"
REPORT = "reports/split.json"
PLOT = "plots/split/age_histogram.png"


def main() -> None:
    manifest = load_manifest(INGESTED)
    split = split_manifest(manifest, load_params().split)
    write_csv(split, SPLIT_FILE)
    write_json(split_report(manifest, split), REPORT)
    ages = manifest.merge(split, on="id")
    age_histogram({name: ages.loc[ages["split"] == name, "age"] for name in SPLITS}, PLOT)


if __name__ == "__main__":
    run_stage(main)
