"""The ``faceage`` command. Arguments are parsed before torch is imported, so help and usage errors answer at once."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

PREDICT_HELP = """\
Estimate the age of every face in photos. Each photo is decoded (EXIF orientation applied), its faces are
found by dlib's HOG detector and aligned on dlib's 5-point landmarks into chips framed like the training
images, and the model predicts each chip. Folders are walked recursively; photos are processed in
bounded blocks, so a folder of any size fits in memory. A photo without a face is reported as such;
a file that cannot be read gets a one-line error and the rest go on (exit status 1 if any could not).

Videos (.mp4, .mov, .mkv, .avi, .webm, .m4v) are read frame by frame: faces are found in --frames-per-second
frames per second of video, followed from frame to frame by the overlap of their boxes, and each person
followed gets one age and interval (the mean over the frames they were seen in) with the seconds they span.

Detection settings (faces.* in params.yaml) come from the model's checkpoint; --detector, --max-side,
--min-size, --upsample and --min-score override them."""

EXPORT_HELP = """\
Write the age network for use without this package: ONNX (onnxruntime, any language) or TorchScript.
The graph takes float32 RGB face chips in [0, 1], shape (batch, 3, S, S) with S the size of the aligned chips
the model was trained on (data.image_size, printed on export), and returns per face the age in years, its calibrated
interval (age_low, age_high) and, with a gender head, the probability of female. The batch size is dynamic.
An ONNX graph also carries the model's face settings, so faceage predict --model model.onnx runs it on photos
through ONNX Runtime. --int8 also writes a graph whose convolutions are quantised to int8 (NAME.int8.onnx),
calibrated on the pipeline's first validation faces (at most half of them) and written only if the MAE of the
other validation faces moves by less than --int8-tolerance years (defaults: params.yaml's export section, which
the export stage uses to write the graph faceage predict and serve run when no model is named).
PyTorch deprecates TorchScript in favour of torch.export: prefer ONNX for new deployments."""

SERVE_HELP = """\
Serve a web page where photos are dropped or picked (several at once) and each face is shown boxed with its age,
its interval and, for a threshold typed on the page, whether it is that old or older; the results download as
JSON. Faces are found and predicted as faceage predict does. The page needs nothing from the internet."""


SYNTHETIC_WARNING = (
    "warning: {model} learnt ages from the synthetic demo's drawn faces: its ages of real photos mean nothing. "
    "Use --model dlib (dlib's age model, trained on real faces), or train on real faces (README: Running on UTKFace)."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``faceage`` and its subcommands."""
    parser = argparse.ArgumentParser(prog="faceage", description="Estimate ages from face photos.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('faceage')}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser(
        "predict", help="ages of the faces in photos or folders", description=PREDICT_HELP, formatter_class=Raw
    )
    predict.add_argument("paths", nargs="+", type=Path, metavar="PHOTO|FOLDER", help="image files or folders")
    predict.add_argument(
        "--model",
        help="trained checkpoint, an ONNX graph from faceage export (run by ONNX Runtime; default: the pipeline's, "
        "from its export stage, else its checkpoint), dlib (dlib's age model as its authors trained it on real "
        "faces), or an MLflow model URI (models:/NAME@ALIAS, runs:/RUN/model)",
    )
    predict.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    predict.add_argument("--annotate", type=Path, metavar="DIR", help="write copies of the photos with boxes and ages")
    predict.add_argument("--aligned", action="store_true", help="inputs are ready face crops: skip face detection")
    predict.add_argument(
        "--over", type=float, metavar="AGE", help="say per face whether it is AGE or older: yes/no/uncertain"
    )
    add_flip_argument(predict, "average each age with the mirror image's")
    add_bf16_argument(predict)
    predict.add_argument("--detector", help="face detector: hog | mtcnn")
    predict.add_argument("--max-side", type=int, help="longer side of the copy faces are searched on (hog: 1280)")
    predict.add_argument("--min-size", type=int, help="smallest face side kept, pixels of the photo")
    predict.add_argument("--upsample", type=int, help="HOG detector upsampling (finds smaller faces, slower)")
    predict.add_argument("--min-score", type=float, help="HOG detection score a face must exceed")
    predict.add_argument("--workers", type=int, default=0, help="face-finding processes, 0 = one per core")
    predict.add_argument("--block", type=int, default=64, help="photos in memory at once (per block)")
    predict.add_argument(
        "--frames-per-second",
        type=float,
        default=5.0,
        metavar="N",
        help="videos: frames searched for faces per second of video (default 5; 0 = every frame)",
    )

    serve = commands.add_parser("serve", help="a web page to try the model on photos", description=SERVE_HELP)
    serve.add_argument(
        "--model",
        help="trained checkpoint, an ONNX graph from faceage export (default: the pipeline's, as for predict), dlib, "
        "or an MLflow model URI (models:/NAME@ALIAS)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    add_flip_argument(serve, "average each age with the mirror image's")
    add_bf16_argument(serve)

    export = commands.add_parser("export", help="write the network as ONNX or TorchScript", description=EXPORT_HELP)
    export.add_argument("--format", choices=("onnx", "torchscript"), required=True, help="file format")
    export.add_argument("--model", type=Path, help="trained checkpoint (default: the pipeline's)")
    export.add_argument("--output", type=Path, help="output file (default: next to the model, .onnx or .ts)")
    add_flip_argument(export, "build mirror-image averaging into the graph")
    export.add_argument("--int8", action="store_true", help="also write an int8 graph (ONNX), if it keeps the MAE")
    export.add_argument(
        "--calibration-faces", type=int, help="validation faces calibrating int8 (default: params.yaml's)"
    )
    export.add_argument(
        "--int8-tolerance", type=float, help="largest validation MAE change, years (default: params.yaml's)"
    )
    return parser


def add_flip_argument(command: argparse.ArgumentParser, what: str) -> None:
    """``--flip``/``--no-flip``: whether ``what`` is done; unset, as the model's intervals were calibrated."""
    command.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help=f"{what} (default: as the model's intervals were calibrated)",
    )


def add_bf16_argument(command: argparse.ArgumentParser) -> None:
    """``--bf16``/``--no-bf16``: whether a checkpoint runs under bfloat16 autocast on the CPU."""
    command.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="run a checkpoint under bfloat16 autocast on the CPU: faster where the CPU computes bfloat16 natively "
        "(the default there), ages about 0.1 year from float32's on average",
    )


class Raw(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' paragraphs."""


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name the terminal's encoding cannot show is escaped, not fatal
        stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    from faceage.errors import FaceageError

    try:
        if args.model is None:  # the model of the pipeline in this folder
            args.model = pipeline_model(args)
        return {"predict": run_predict, "serve": run_serve, "export": run_export}[args.command](args)
    except FaceageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def pipeline_model(args: argparse.Namespace) -> Path:
    """The model of the pipeline in this folder that ``args.command`` uses: export exports the checkpoint, predict
    and serve run the export stage's graph where it fits what was asked (a note says when it cannot)."""
    from faceage.stage import pipeline_paths

    paths = pipeline_paths()
    if args.command == "export":
        return paths["model"]
    from faceage.serving.default_graph import default_model

    model, note = default_model(paths, args.flip, args.bf16)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return model


def run_predict(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from faceage.data.ingest import worker_count
    from faceage.data.layouts import is_image_name
    from faceage.errors import FaceageError
    from faceage.serving.loading import load_any
    from faceage.serving.photos import input_files
    from faceage.serving.video import is_video_name, predict_video

    if args.block < 1:
        raise FaceageError(f"--block must be at least 1, got {args.block}")
    if not 0 <= args.frames_per_second <= 1000:
        raise FaceageError(f"--frames-per-second must be 0..1000, got {args.frames_per_second}")
    if args.annotate and args.annotate.exists() and not args.annotate.is_dir():
        raise FaceageError(f"--annotate: {args.annotate} is not a folder")
    if args.annotate:
        try:
            args.annotate.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FaceageError(f"--annotate: cannot make the folder {args.annotate}: {error.strerror}") from None
    estimator = load_any(str(args.model), flip=args.flip, bf16=args.bf16).estimator
    if estimator.synthetic:
        print(SYNTHETIC_WARNING.format(model=args.model), file=sys.stderr)
    if estimator.level is None:
        print(f"note: {args.model} has no calibrated intervals: ages come without one", file=sys.stderr)
    overrides = {
        "detector": args.detector,
        "max_side": args.max_side,
        "min_size": args.min_size,
        "upsample": args.upsample,
        "min_score": args.min_score,
    }
    estimator.faces = replace(estimator.faces, **{k: v for k, v in overrides.items() if v is not None})
    files = input_files(args.paths, lambda name: is_image_name(name) or is_video_name(name))
    photos = [path for path in files if not is_video_name(path.name)]
    videos = [path for path in files if is_video_name(path.name)]
    workers = worker_count(args.workers)
    results, failed = [], 0
    with tqdm(total=len(files), desc="files", unit="file", disable=None) as progress:
        found = estimator.predict_files(photos, args.aligned, workers, args.block, args.over)
        for video in videos:
            found = itertools.chain(
                found, [predict_video(estimator, video, args.frames_per_second, workers, args.over)]
            )
        for result in found:
            progress.update()
            failed += "error" in result
            if args.annotate and ("faces" in result or "tracks" in result):
                write_annotated(result, args.annotate / annotated_name(result["file"], args.paths))
            if args.json:
                results.append(result)
            else:
                print_result(result, args.over)
    if args.json:
        faces = sum(len(r.get("faces", ())) for r in results)
        summary = {"model": str(args.model), "dataset": estimator.dataset, "photos": len(photos), "faces": faces}
        summary.update(videos=len(videos), tracks=sum(len(r.get("tracks", ())) for r in results))
        summary.update(interval_level=estimator.level, over=args.over)
        print(json.dumps({**summary, "results": results}))
    return 1 if failed else 0


def write_annotated(result: dict, out: Path) -> None:
    """The annotated copy of a photo's or video's result (a video's as MP4); one line when it cannot be written."""
    from faceage.errors import FaceageError
    from faceage.serving.annotate import annotate_photo
    from faceage.serving.video import annotate_video

    try:
        if "tracks" in result:
            annotate_video(Path(result["file"]), result, out.with_suffix(".mp4"))
        else:
            annotate_photo(Path(result["file"]), result["faces"], out)
    except OSError as error:
        raise FaceageError(f"--annotate: cannot write {out}: {error.strerror or error}") from None


def annotated_name(file: str, named: Sequence[Path]) -> Path:
    """Where the annotated copy of ``file`` goes below the output folder: its path below the folder named on the
    command line that holds it, else (a photo named itself) its file name."""
    path = Path(file)
    for folder in named:
        if folder.is_dir() and path.is_relative_to(folder):
            return path.relative_to(folder)
    return Path(path.name)


def print_result(result: dict, over: float | None) -> None:
    """One line per face (per person followed, in a video) on stdout; a file without a face says so; errors go to
    stderr."""
    if "error" in result:
        print(f"{result['file']}: error: {result['error']}", file=sys.stderr)
    elif not result.get("faces", result.get("tracks")):
        print(f"{result['file']}: no face found")
    for face in result.get("faces", ()):
        where = (
            ""
            if face["box"] is None
            else f" face {face['face'] + 1} at {tuple(face['box'])} (score {face['score']:.2f})"
        )
        print(f"{result['file']}{where}: {age_text(face, over)}")
    for track in result.get("tracks", ()):
        span = f"{track['start_seconds']:.1f}-{track['end_seconds']:.1f} s"
        seen = f"seen in {track['frames_seen']} frame{'s' * (track['frames_seen'] != 1)}"
        print(f"{result['file']} person {track['track']} ({span}, {seen}): {age_text(track, over)}")


def age_text(face: dict, over: float | None) -> str:
    """``31 years 4 months (90 %: 26-37), over 18: yes, female 0.12``: what is known of a face's age."""
    interval = f" ({face['interval']})" if "interval" in face else ""
    decision = f", over {over:g}: {face['over']}" if "over" in face else ""
    gender = f", female {face['female_probability']:.2f}" if "female_probability" in face else ""
    return f"{face['age']}{interval}{decision}{gender}"


def run_serve(args: argparse.Namespace) -> int:
    from faceage.data.sources import MAX_FILE_BYTES
    from faceage.errors import FaceageError
    from faceage.serving.loading import load_any
    from faceage.serving.page import serve

    if not 0 < args.port < 65536:
        raise FaceageError(f"--port must be 1..65535, got {args.port}")
    model = load_any(str(args.model), flip=args.flip, bf16=args.bf16)
    if model.estimator.synthetic:
        print(SYNTHETIC_WARNING.format(model=args.model), file=sys.stderr)
    serve(model, args.host, args.port, MAX_FILE_BYTES)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from faceage.errors import FaceageError
    from faceage.sections import MAX_AGE
    from faceage.serving.export import export_model

    if args.int8 and args.format != "onnx":
        raise FaceageError("--int8 quantises ONNX graphs: use --format onnx")
    if args.int8 and None in (args.calibration_faces, args.int8_tolerance):
        from faceage.params import load_params

        defaults = load_params().export
        if args.calibration_faces is None:
            args.calibration_faces = defaults.calibration_faces
        if args.int8_tolerance is None:
            args.int8_tolerance = defaults.int8_tolerance
    if args.int8 and (args.calibration_faces < 1 or not 0 < args.int8_tolerance <= MAX_AGE):
        raise FaceageError("--calibration-faces must be at least 1 and --int8-tolerance a number of years above 0")
    output = args.output or args.model.with_suffix(".onnx" if args.format == "onnx" else ".ts")
    chip_size = export_model(args.model, output, args.format, flip=args.flip)
    print(f"wrote {output}: input (batch, 3, {chip_size}, {chip_size}) float32 RGB in [0, 1]")
    if args.int8:
        from faceage.serving.quantize import quantise_on_validation, refused, summary_line
        from faceage.stage import pipeline_paths

        quantised = output.with_suffix(".int8.onnx")
        check = quantise_on_validation(
            output, quantised, chip_size, args.calibration_faces, args.int8_tolerance, pipeline_paths()
        )
        if not check.kept:
            raise refused(check, quantised)
        print(f"wrote {quantised}: {summary_line(check)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
