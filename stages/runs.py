"""Stage runs: the ids of the finished MLflow runs on the current data. It runs on every ``dvc repro``
(the store lives outside DVC) and changes only when a run is added or removed, which re-runs compare. It is
given the experiment's name (``mlflow.experiment``) by ``dvc.yaml``'s command, so that this check, run every
time, imports as little as it can."""

import sys

from faceage.data.manifest import dataset_fingerprint
from faceage.stage import pipeline_paths, run_stage, write_json
from faceage.tracking.store import finished_run_ids


def main() -> None:
    experiment, paths = sys.argv[1], pipeline_paths()
    fingerprint = dataset_fingerprint(paths["ingested"], paths["split"])
    runs = finished_run_ids(experiment, fingerprint)
    write_json({"experiment": experiment, "dataset_fingerprint": fingerprint, "finished_runs": runs}, paths["runs"])


if __name__ == "__main__":
    run_stage(main)
