"""Stage demo: write the synthetic demo data set as a UTKFace-style archive."""

from faceage.demo import write_demo_archive
from faceage.params import load_params
from faceage.stage import run_stage

ARCHIVE = "data/demo/UTKFace.tar.gz"


def main() -> None:
    write_demo_archive(ARCHIVE, load_params().demo)


if __name__ == "__main__":
    run_stage(main)
