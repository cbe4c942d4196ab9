"""Stage ingest: decode the source's images once into data/ingested/, accounting for every file."""

from faceage.ingest import ingest
from faceage.params import load_params
from faceage.stage import run_stage, write_json

OUT_DIR = "data/ingested"
REPORT = "reports/ingest.json"


def main() -> None:
    params = load_params()
    write_json(ingest(params.data, OUT_DIR, params.faces), REPORT)


if __name__ == "__main__":
    run_stage(main)
