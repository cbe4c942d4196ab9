"""Stage ingest: decode the source's images once into data/ingested/, accounting for every file. Given the name
of a test source (``python stages/ingest.py NAME``, as ``dvc.yaml``'s ``test_source`` stages run it), ingest
that source into data/test_sources/NAME/ instead, with the same image size and age range."""

import sys
from dataclasses import replace

from faceage.data.ingest import ingest
from faceage.errors import FaceageError
from faceage.params import load_params
from faceage.stage import pipeline_paths, run_stage, write_json


def main() -> None:
    params, paths = load_params(), pipeline_paths()
    if len(sys.argv) == 1:
        write_json(ingest(params.data, paths["ingested"], params.faces), paths["ingest_report"])
        return
    name = sys.argv[1]
    if name not in params.test_sources:
        raise FaceageError(f"no test source {name!r} in params.yaml's test_sources ({', '.join(params.test_sources)})")
    source = params.test_sources[name]
    data = replace(params.data, source=source.source, align=source.align)
    report = ingest(data, paths["test_sources"] / name, params.faces, allow_empty=True)  # evaluate says if empty
    write_json(report, paths["test_source_reports"] / f"{name}.json")


if __name__ == "__main__":
    run_stage(main)
