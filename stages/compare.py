"""Stage compare: the leaderboard of evaluated runs."""

import json
from pathlib import Path

from faceage.compare import leaderboard, run_entry
from faceage.stage import run_stage, write_json

TRAIN_REPORT = "metrics/train.json"
EVALUATE_REPORT = "metrics/evaluate.json"
REPORT = "metrics/compare.json"


def main() -> None:
    current = run_entry(json.loads(Path(TRAIN_REPORT).read_text()), json.loads(Path(EVALUATE_REPORT).read_text()))
    write_json({"leaderboard": leaderboard([current])}, REPORT)


if __name__ == "__main__":
    run_stage(main)
