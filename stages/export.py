"""Stage export: the graph faceage predict and serve run when no model is named (ONNX, int8 where it keeps the
validation MAE) and why it is in the precision it is."""

from faceage.params import load_params
from faceage.serving.default_graph import write_default_graph
from faceage.stage import pipeline_paths, run_stage, write_json


def main() -> None:
    paths = pipeline_paths()
    report = write_default_graph(paths["model"], paths["graph"], load_params().export, paths)
    write_json(report, paths["export_report"])


if __name__ == "__main__":
    run_stage(main)
