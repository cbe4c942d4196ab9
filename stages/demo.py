"""Stage demo: write the synthetic demo data set as a UTKFace-style archive, and a smaller one of other people
drawn in another style (a test source)."""

from faceage.data.demo import write_demo_archive
from faceage.params import load_params
from faceage.stage import run_stage

ARCHIVE = "data/demo/UTKFace.tar.gz"
RESTYLED = "data/demo/restyled.tar.gz"


def main() -> None:
    params = load_params().demo
    write_demo_archive(ARCHIVE, params)
    write_demo_archive(RESTYLED, params, restyled=True)


if __name__ == "__main__":
    run_stage(main)
