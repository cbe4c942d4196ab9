"""Stage runs: the ids of the finished MLflow runs on the current data. It runs on every ``dvc repro``
(the store lives outside DVC) and changes only when a run is added or removed, which re-runs compare."""

from faceage.params import load_params
from faceage.stage import run_stage, write_json
from faceage.tracking.store import dataset_fingerprint, finished_run_ids

MANIFEST = "data/ingested/manifest.csv"
SPLIT_FILE = "data/split.csv"
REPORT = "data/mlflow_runs.json"


def main() -> None:
    experiment = load_params().mlflow.experiment
    fingerprint = dataset_fingerprint([MANIFEST, SPLIT_FILE])
    runs = finished_run_ids(experiment, fingerprint)
    write_json({"experiment": experiment, "dataset_fingerprint": fingerprint, "finished_runs": runs}, REPORT)


if __name__ == "__main__":
    run_stage(main)
