"""The ``faceage`` command: ``faceage predict IMAGE... [--model models/model.pt] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faceage.errors import FaceageError
from faceage.images import ImageDecodeError, decode_image
from faceage.inference import load_checkpoint, predict
from faceage.runtime import select_device


def years_and_months(age: float) -> str:
    """``34 years 2 months`` for 34.2."""
    years, months = divmod(round(age * 12), 12)
    return f"{years} year{'s' * (years != 1)} {months} month{'s' * (months != 1)}"


def predict_files(paths: Sequence[Path], model_path: Path, flip: bool = True) -> list[dict]:
    """One result per file: ``age_years`` and ``age`` text, or ``error`` when it cannot be read."""
    device = select_device()
    model, checkpoint = load_checkpoint(model_path, device)
    results: list[dict] = []
    faces: list[np.ndarray] = []
    for path in paths:
        try:
            faces.append(decode_image(path.read_bytes(), checkpoint["image_size"]))
            results.append({"path": str(path)})
        except OSError as error:
            results.append({"path": str(path), "error": f"cannot read file: {error.strerror or error}"})
        except ImageDecodeError as error:
            results.append({"path": str(path), "error": f"{error.reason.replace('_', ' ')}: {error.detail}"})
    if faces:
        batch = np.stack(faces)
        ages = predict(model, batch, np.arange(len(batch)), checkpoint["model"]["input_size"], 64, device, flip=flip)
        for result, age in zip((r for r in results if "error" not in r), ages["age"], strict=True):
            result["age_years"] = round(float(age), 2)
            result["age"] = years_and_months(float(age))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faceage", description="Estimate ages from face photos.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict_parser = commands.add_parser(
        "predict", help="predict the age of face crops (aligned and cropped like the training images)"
    )
    predict_parser.add_argument("images", nargs="+", type=Path, help="image files")
    predict_parser.add_argument("--model", type=Path, default=Path("models/model.pt"), help="trained checkpoint")
    predict_parser.add_argument("--json", action="store_true", help="print one JSON list instead of lines")
    predict_parser.add_argument("--no-flip", action="store_true", help="skip mirror-image test-time augmentation")
    args = parser.parse_args(argv)
    try:
        results = predict_files(args.images, args.model, flip=not args.no_flip)
    except FaceageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=2))
    for result in results:
        if "error" in result:
            print(f"{result['path']}: error: {result['error']}", file=sys.stderr)
        elif not args.json:
            print(f"{result['path']}: {result['age_years']:.1f} years ({result['age']})")
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
