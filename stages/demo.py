"""Stage demo: write the synthetic demo data set as a UTKFace-style archive, and a smaller one of other people
drawn in another style (a test source)."""

from faceage.data.demo import write_demo_archive
from faceage.params import load_params
from faceage.stage import pipeline_paths, run_stage


def main() -> None:
    params, paths = load_params().demo, pipeline_paths()
    write_demo_archive(paths["demo_archive"], params)
    write_demo_archive(paths["demo_restyled"], params, restyled=True)


if __name__ == "__main__":
    run_stage(main)
