"""Fixtures that write tiny image files and data sets at test time."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.workspace import copy_worktree, tool_env
from faceage.model.checkpoint import load_model
from faceage.training.loop import train_network

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY = {
    "demo": {"num_images": 150, "image_size": 48, "restyled_images": 40},
    "split": {"train": 0.65, "val": 0.10, "calibration": 0.10},  # 15 calibration faces: enough for 90 % intervals
    "data": {"image_size": 32},
    "model": {"backbone": "mobilenet_v2", "pretrained": False, "input_size": 32},
    "train": {"epochs": 1, "batch_size": 16},
    "members": {},
}


@functools.cache
def project_params():
    """The project's ``params.yaml``: the one place settings' values are written, so tests start from it."""
    from faceage.params import load_params

    return load_params(REPO / "params.yaml")


def settings(cls, **changes):
    """The project's settings of type ``cls`` (a section such as ``ModelParams``, or all of ``Params``) with
    ``changes``, checked as params.yaml's are."""
    from faceage.params import Params

    base = project_params() if cls is Params else getattr(project_params(), cls.SECTION)
    return dataclasses.replace(base, **changes)


def project_params_with(sections: dict[str, dict], **whole):
    """The project's ``params.yaml`` with each of ``sections`` updated by its changes and each of ``whole``
    replaced, checked as params.yaml is."""
    import yaml

    from faceage.checked import from_dict
    from faceage.params import Params

    values = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, changes in sections.items():
        values[name] = {**values[name], **changes}
    return from_dict(Params, {**values, **whole})


def train_members(params, data: tuple, age_range: tuple[int, int]) -> tuple[dict, dict]:
    """Each network of ``params`` (the main one and its members) trained on the CPU on ``data`` (as
    :func:`synthetic_faces` gives it): their results and their setups, by name."""
    import torch

    from faceage.training.members import member_params
    from faceage.training.setup import TrainingSetup

    setups = {
        name: TrainingSetup(*data, member.model, member.train, member.augment, age_range)
        for name, member in member_params(params).items()
    }
    return {name: train_network(setup, torch.device("cpu")) for name, setup in setups.items()}, setups


REPLACED_WHOLE = ("test_sources", "members")  # sections of named entries: written ones replace the project's


def overlay(path: Path, text: str) -> Path:
    """The project's ``params.yaml`` with the settings of ``text`` (YAML) put over it, written at ``path`` as
    ``dvc exp run -S`` writes it (ruamel, YAML 1.2); named entries of :data:`REPLACED_WHOLE` replace the project's."""
    from dvc.utils.serialize import modify_yaml
    from ruamel.yaml import YAML

    def merge(base, changes, top: bool) -> None:
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict) and not (top and key in REPLACED_WHOLE):
                merge(base[key], value, False)
            else:
                base[key] = value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((REPO / "params.yaml").read_text())
    changes = YAML().load(text)
    with modify_yaml(path) as values:
        if isinstance(changes, dict):
            merge(values, changes, True)
    return path


def synthetic_faces(count: int, size: int, seed: int, train: int, val: int):
    """``count`` tiny "faces" of ``size`` px whose brightness follows the age (noise on top), so a network can
    learn something in an epoch: ``(images, ages, genders, split)`` with genders 0/1 and some unknown (-1),
    the first ``train`` ids in the train split, the next ``val`` in val and the rest in test."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    ages = rng.integers(1, 90, count)
    noise = rng.normal(0, 20, (count, size, size, 3))
    images = np.clip(ages[:, None, None, None] * 2.5 + noise, 0, 255).astype(np.uint8)
    genders = np.where(np.arange(count) % 7 == 0, -1, np.arange(count) % 2)
    split = pd.DataFrame(
        {"id": range(count), "split": ["train"] * train + ["val"] * val + ["test"] * (count - train - val)}
    )
    return images, ages, genders, split


def image_bytes(
    color: tuple[int, ...] = (200, 100, 50),
    size: tuple[int, int] = (24, 24),
    fmt: str = "JPEG",
    mode: str = "RGB",
    **save,
) -> bytes:
    """Encode a solid-colour image."""
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A black RGB PNG of ``width`` x ``height`` pixels, a few hundred KB however large (a decompression bomb that
    Pillow's own limit lets through below 179 megapixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), b"\x00" * (1 + 3 * width)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def noise_jpeg(seed: int, size: int = 24) -> bytes:
    """A JPEG of random pixels: distinct content per seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``{relative path: content}`` below ``root``."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def pack(files: dict[str, bytes], path: Path) -> Path:
    """Write ``files`` into a ``.tar.gz`` or ``.zip`` archive, by ``path``'s suffix."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in files.items():
                archive.writestr(name, content)
    else:
        with tarfile.open(path, "w:gz") as archive:
            for name, content in files.items():
                member = tarfile.TarInfo(name)
                member.size = len(content)
                archive.addfile(member, io.BytesIO(content))
    return path


@pytest.fixture
def utkface_files() -> dict[str, bytes]:
    """A small UTKFace-style set with every kind of bad file next to good ones."""
    good = {
        f"UTKFace/{age}_{age % 2}_{age % 5}_2017010{age % 9}120000{age:03d}.jpg.chip.jpg": noise_jpeg(age)
        for age in range(1, 31)
    }
    truncated = noise_jpeg(99)
    return {
        **good,
        "UTKFace/40_0_1_20170101120000999.jpg.chip.jpg": noise_jpeg(1),  # same bytes as the age-1 image
        "UTKFace/41_1_20170109150557335.jpg.chip.jpg": noise_jpeg(41),  # race missing
        "UTKFace/42_0_0_20170116232725357jpg.chip.jpg": noise_jpeg(42),  # dot missing
        "UTKFace/0_0_0_20170101120000001.jpg.chip.jpg": noise_jpeg(50),
        "UTKFace/200_0_0_20170101120000002.jpg.chip.jpg": noise_jpeg(51),
        "UTKFace/43_0_0_20170101120000003.jpg.chip.jpg": truncated[: len(truncated) // 2],
        "UTKFace/44_0_0_20170101120000004.jpg.chip.jpg": b"this is a text file, not a JPEG\n",
    }


ASTRONAUT = REPO / "tests" / "data" / "astronaut.jpg"  # skimage.data.astronaut(), public domain (NASA)
ASTRONAUT_CLIP = REPO / "tests" / "data" / "astronaut.mp4"  # the photo panned and zoomed (test_video.py's pan_and_zoom)
ASTRONAUT_FACE = (179, 83, 266, 170)  # her face's box as dlib's HOG detector finds it (left, top, right, bottom)
ASTRONAUT_BOX = (181, 79, 269, 167)  # ... as the default detector finds it (MTCNN, on the 384-px copy)


def box_in(text: str) -> tuple[int, ...]:
    """The first box ``(left, top, right, bottom)`` written in ``text``, as faceage predict writes it."""
    return tuple(int(v) for v in re.search(r"\((-?\d+), (-?\d+), (-?\d+), (-?\d+)\)", text).groups())


def is_her_box(box) -> bool:
    """Whether ``box`` is :data:`ASTRONAUT_BOX`, give or take 2 px (float rounding differs between CPUs)."""
    return len(box) == 4 and all(abs(a - b) <= 2 for a, b in zip(box, ASTRONAUT_BOX, strict=True))


def assert_predict_leaves_no_download(model: str, env: dict, tmp_path: Path) -> None:
    """``faceage predict`` of the astronaut with the MLflow model ``model`` works and leaves no folder in its
    temporary folder (ONNX Runtime leaves two empty files there)."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    command = [str(Path(sys.executable).with_name("faceage")), "predict", str(ASTRONAUT), "--model", model, "--json"]
    env = {**env, "TMPDIR": str(temporary)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and json.loads(result.stdout)["results"][0]["faces"], result.stderr[-2000:]
    assert not [path for path in temporary.iterdir() if path.is_dir()]


def paste(chip: np.ndarray, angle: float, size: tuple[int, int] = (1024, 768), at: tuple[int, int] = (500, 300)):
    """``chip`` rotated by ``angle`` degrees and pasted into a plain grey photo of ``size``, as an RGB array."""
    photo = Image.new("RGB", size, (128, 128, 128))
    rotated = Image.fromarray(chip).convert("RGBA").rotate(angle, Image.Resampling.BILINEAR, expand=True)
    photo.paste(rotated, at, rotated)
    return np.asarray(photo)


def encode(pixels: np.ndarray, fmt: str = "JPEG") -> bytes:
    """Encode an RGB array."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small trained checkpoint with a gender head and calibrated intervals, saved as the train stage does
    (with face settings)."""
    import pandas as pd
    import torch

    from faceage.model.age_model import AgeModel
    from faceage.model.checkpoint import checkpoint_of, save_checkpoint
    from faceage.report_sections import IntervalParams
    from faceage.sections import AugmentParams, FacesParams, ModelParams, TrainParams
    from faceage.training.calibrate import calibrate
    from faceage.training.setup import TrainingSetup

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    ages = rng.integers(1, 90, 60)
    split = pd.DataFrame({"id": range(60), "split": ["train"] * 30 + ["val"] * 15 + ["calibration"] * 15})
    setup = TrainingSetup(
        images,
        ages,
        rng.integers(0, 2, 60),
        split,
        settings(
            ModelParams, backbone="resnet18", pretrained=False, input_size=32, gender_weight=1.0, reference_blend=(0.0,)
        ),
        settings(TrainParams, head_epochs=1, epochs=0, batch_size=16),
        settings(AugmentParams),
        (1, 100),
    )
    result = train_network(setup, torch.device("cpu"))
    model = AgeModel.of(result.network, 32)
    spread = settings(IntervalParams, spreads=("distribution",))  # its ages barely differ: the "age" curve is steep
    held_out = (np.arange(30, 45), np.arange(45, 60), spread)
    calibrate(model, images, ages, *held_out, 16, torch.device("cpu"), flip=True)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(checkpoint_of(model, [setup.model_params], faces=settings(FacesParams)), path)
    return path


def assert_onnx_export_predicts_as_the_model(model_path: Path, images: np.ndarray, tmp_path: Path) -> None:
    """``faceage export`` of the checkpoint at ``model_path`` to ONNX gives, under onnxruntime, the ages and
    intervals its model predicts for ``images`` (uint8 chips at the model's chip size, ``data.image_size``), mirror
    images averaged in both as its intervals were calibrated; so does :class:`OnnxEngine`, which ``faceage predict``
    runs the graph with."""
    import onnxruntime as ort
    import torch

    from faceage.cli import main
    from faceage.model.inference import predict
    from faceage.serving.engines import OnnxEngine

    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", "--model", str(model_path), "--output", str(onnx_path)]) == 0
    model, _ = load_model(model_path, torch.device("cpu"))
    expected = predict(model, images, np.arange(len(images)), 8, torch.device("cpu"), flip=model.calibrated_flip)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    chips = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255
    names = ["age", "age_low", "age_high"] if model.calibration else ["age"]
    for name, values in zip(names, session.run(names, {"chips": chips}), strict=True):
        np.testing.assert_allclose(values, expected[name], atol=1e-3, err_msg=name)
    outputs = OnnxEngine(onnx_path).outputs(images, model.calibrated_flip, 2)  # as faceage predict runs the graph
    for name in names:
        np.testing.assert_allclose(outputs[name], expected[name], atol=1e-3, err_msg=name)


def run(args, cwd, **extra_env):
    """Run a command with this environment's tools first on PATH and MLflow's default store."""
    result = subprocess.run(args, cwd=cwd, env=tool_env(**extra_env), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def commit(repo, message):
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A git + DVC copy of the working tree with tiny parameters, its data made and split, and no MLflow
    store yet. Tests work on copies of it, never on it."""
    repo = copy_worktree(REPO, tmp_path_factory.mktemp("prepared"), TINY)
    run(["dvc", "repro", "split"], repo)
    commit(repo, "data")
    return repo


def pipeline_folder(root: Path, faces: np.ndarray, ages: np.ndarray) -> Path:
    """A folder as the pipeline leaves it, as far as int8 export reads it: dvc.yaml, params.yaml, the ingested
    faces, the split (every other face a validation face)."""
    import pandas as pd

    from faceage.data.manifest import IMAGES_FILE, MANIFEST_FILE

    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "data" / "ingested").mkdir(parents=True)
    np.save(root / "data" / "ingested" / IMAGES_FILE, faces)
    pd.DataFrame({"age": ages}).to_csv(root / "data" / "ingested" / MANIFEST_FILE, index=False)
    splits = ["train", "val"] * (len(faces) // 2)
    pd.DataFrame({"id": range(len(faces)), "split": splits}).to_csv(root / "data" / "split.csv", index=False)
    return root
