"""Stage split: reproducible, age-stratified train/val/test split of the ingested images."""

from faceage.data.manifest import load_manifest
from faceage.data.split import SPLITS, split_manifest, split_report
from faceage.params import load_params
from faceage.plots import age_histogram
from faceage.stage import pipeline_paths, run_stage, write_csv, write_json


def main() -> None:
    paths = pipeline_paths()
    manifest = load_manifest(paths["ingested"])
    split = split_manifest(manifest, load_params().split)
    write_csv(split, paths["split"])
    write_json(split_report(manifest, split), paths["split_report"])
    ages = manifest.merge(split, on="id")
    age_histogram({name: ages.loc[ages["split"] == name, "age"] for name in SPLITS}, paths["split_plot"])


if __name__ == "__main__":
    run_stage(main)
