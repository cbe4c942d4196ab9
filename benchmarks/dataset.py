"""The UTKFace archive the benchmarks read: where it is by default, and its first images for the quick ones."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from faceage.data.layouts import is_image_name
from faceage.data.sources import open_source

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "UTKFace.tar.gz"


def add_source_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="UTKFace archive or folder")


def first_images(source: Path, count: int) -> list[bytes]:
    """The first ``count`` image files of the data set at ``source``, in name order; exits with one line when
    there is none there."""
    if not source.exists():
        sys.exit(f"error: no data set at {source}: pass --source")
    opened = open_source(source)
    names = sorted(name for name in opened.names() if is_image_name(name))[:count]
    return [data for _, data in sorted(opened.read(set(names)))]
