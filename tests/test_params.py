import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, overlay

from faceage.errors import FaceageError
from faceage.params import Params, TestSource, load_params


def test_settings_have_their_values_in_params_yaml_only():
    """No dataclass field holds a default: a value written in params.yaml is written nowhere else."""
    import dataclasses
    import typing

    sections = [typing.get_type_hints(Params)[f.name] for f in dataclasses.fields(Params)]
    classes = [Params, TestSource, *(cls for cls in sections if dataclasses.is_dataclass(cls))]
    defaulted = [
        f"{cls.__name__}.{item.name}"
        for cls in classes
        for item in dataclasses.fields(cls)
        if item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING
    ]
    assert defaulted == []


@pytest.mark.parametrize(("dotted", "missing"), [("split.seed", "split: missing key(s) seed"), ("faces", "faces")])
def test_a_missing_setting_is_refused_in_one_line_naming_it(tmp_path, dotted, missing):
    values = without(yaml.safe_load((REPO / "params.yaml").read_text()), dotted)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(FaceageError, match=r"^[^\n]*missing key\(s\) [^\n]*$") as error:
        load_params(tmp_path / "params.yaml")
    assert missing in str(error.value)


def test_unknown_key_is_rejected(tmp_path):
    overlay(tmp_path / "params.yaml", "split:\n  sead: 7\n")
    with pytest.raises(FaceageError, match="unknown key"):
        load_params(tmp_path / "params.yaml")


def test_wrong_type_is_rejected(tmp_path):
    overlay(tmp_path / "params.yaml", "train:\n  epochs: three\n")
    with pytest.raises(FaceageError, match=r"train\.epochs: expected int"):
        load_params(tmp_path / "params.yaml")


def test_integer_is_accepted_for_a_float(tmp_path):
    overlay(tmp_path / "params.yaml", "train:\n  lr: 1\n")
    lr = load_params(tmp_path / "params.yaml").train.lr
    assert lr == 1.0 and isinstance(lr, float)


@pytest.mark.parametrize(
    "written, value", [("1e-7", 1e-7), ("1e-07", 1e-7), ("3E-4", 3e-4), ("+2.5e-3", 2.5e-3), ("1.0e-5", 1e-5)]
)
def test_scientific_notation_is_a_number_as_dvc_reads_it(tmp_path, written, value):
    # `dvc exp run -S train.lr=1e-7` writes 1e-07, a string to YAML 1.1 but a float to DVC's YAML 1.2.
    overlay(tmp_path / "params.yaml", f"train:\n  lr: {written}\n  epochs: 3\n")
    params = load_params(tmp_path / "params.yaml")
    assert params.train.lr == pytest.approx(value) and params.train.epochs == 3


def test_a_dvc_set_value_loads_as_dvc_reads_it(tmp_path):
    import dvc.utils.serialize

    overlay(tmp_path / "params.yaml", "train:\n  lr: 0.1\n")
    with dvc.utils.serialize.modify_yaml(tmp_path / "params.yaml") as data:
        data["train"]["lr"] = 1e-7
    assert (
        load_params(tmp_path / "params.yaml").train.lr
        == dvc.utils.serialize.load_yaml(tmp_path / "params.yaml")["train"]["lr"]
    )


def numeric_keys():
    import dataclasses
    import typing

    for section in dataclasses.fields(Params):
        cls = typing.get_type_hints(Params)[section.name]
        if not dataclasses.is_dataclass(cls):  # test_sources: names to sources, checked below
            continue
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if hints[item.name] in (int, float):
                yield section.name, item.name, cls, hints[item.name]


def write(tmp_path, section: str, key: str, value) -> Path:
    import yaml

    return overlay(tmp_path / "params.yaml", yaml.safe_dump({section: {key: value}}))


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "lr", -0.001),
        ("train", "batch_size", 0),
        ("data", "image_size", 0),
        ("model", "input_size", 0),
        ("model", "dropout", 1.5),
        ("split", "stratify_bins", 0),
        ("evaluate", "confidence", 1.5),
        ("train", "lr", float("nan")),
        ("model", "head", "dex"),
        ("train", "optimizer", "lamb"),
        ("train", "scheduler", "step"),
        ("train", "loss", "huber"),
        ("data", "multiple_faces", "all"),
        ("evaluate", "bucket_edges", [1, 13, 6]),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key_the_value_and_what_is_allowed(tmp_path, section, key, value):
    with pytest.raises(FaceageError) as error:
        load_params(write(tmp_path, section, key, value))
    message = str(error.value)
    assert f"{section}.{key}: " in message and "expected" in message and "\n" not in message


def test_every_number_has_a_range_and_refuses_nan_and_extremes(tmp_path):
    checked = 0
    for section, key, cls, kind in numeric_keys():
        if key == "min_score":  # HOG scores: any finite number
            continue
        assert key in cls.RANGES, f"{section}.{key} has no allowed range"
        # whole numbers count images, epochs, processes, pixels: each has a ceiling that keeps the machine alive
        extremes = [float("nan"), -1e9] if kind is float else [-(10**9), 10**15]
        extremes += [-1, 2**32] if key.endswith("seed") else []  # what numpy's and torch's generators refuse
        for bad in extremes:
            with pytest.raises(FaceageError, match=rf"{section}\.{key}: "):
                load_params(write(tmp_path, section, key, bad))
        checked += 1
    assert checked > 40


def test_values_that_only_conflict_together_are_refused(tmp_path):
    overlay(tmp_path / "params.yaml", "data:\n  min_age: 50\n  max_age: 10\n")
    with pytest.raises(FaceageError, match=r"data\.max_age: 10 is not allowed; expected >= data\.min_age \(50\)"):
        load_params(tmp_path / "params.yaml")
    overlay(tmp_path / "params.yaml", "split:\n  train: 0.9\n")
    with pytest.raises(FaceageError, match=r"split\.train \+ split\.val \+ split\.calibration \+ split\.test: 1\.2"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("test_sources:\n  val:\n    source: x\n    align: false\n", "test_sources: 'val' is not allowed"),
        ("test_sources:\n  my photos:\n    source: x\n    align: false\n", "test_sources: 'my photos' is not allowed"),
        ("test_sources:\n  a:\n    source: ' '\n    align: false\n", "test_sources.source: ' ' is not allowed"),
        ("test_sources:\n  a:\n    path: x\n", "test_sources.a: unknown key"),
        ("test_sources:\n  a: x\n", "test_sources.a: expected a mapping"),
        ("test_sources: [x]\n", "test_sources: expected a mapping"),
        ("train:\n  distill_weight: 1\nmodel:\n  head: regression\n", "needs model.head: classification"),
        ("model:\n  reference_blend: 1.5\n", "model.reference_blend: (1.5,) is not allowed"),
        ("model:\n  reference_blend: [0.5, 0.25]\n", "increasing weights in 0..1"),
        ("train:\n  layer_decay: 0\n", "train.layer_decay: 0"),
        ("train:\n  start_size: 8\n", "train.start_size: 8 is not allowed; expected 0 or 16..1024"),
        ("train:\n  start_size: 128\nmodel:\n  input_size: 112\n", "train.start_size: 128 is above model.input_size"),
        ("train:\n  resize_epochs: 0\n", "train.resize_epochs: 0"),
        (
            "model:\n  backbone: dlib_age_resnet10\ntrain:\n  start_size: 24\n",
            "train.start_size: dlib_age_resnet10 needs at least 31 px",
        ),
        (
            "model:\n  backbone: dlib_age_resnet10\n  input_size: 24\n",
            "model.input_size: dlib_age_resnet10 needs at least 31 px",
        ),
    ],
)
def test_test_sources_and_levers_are_checked(tmp_path, text, message):
    overlay(tmp_path / "params.yaml", text)
    with pytest.raises(FaceageError, match=re.escape(message)):
        load_params(tmp_path / "params.yaml")


def test_test_sources_load_with_their_defaults(tmp_path):
    overlay(tmp_path / "params.yaml", "test_sources:\n  photos:\n    source: p.tar.gz\n    align: true\n")
    sources = load_params(tmp_path / "params.yaml").test_sources
    assert {name: (s.source, s.align) for name, s in sources.items()} == {"photos": ("p.tar.gz", True)}


def dotted_keys(values: dict, prefix: str = "") -> list[str]:
    """Every key of a nested mapping, as DVC's ``-S`` names it."""
    keys = []
    for key, value in values.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += dotted_keys(value, f"{prefix}{key}.")
    return keys


def without(values: dict, dotted: str) -> dict:
    """``values`` with the key at ``dotted`` removed."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return {k: v for k, v in values.items() if k != head}
    return {**values, head: without(values[head], rest)}


def test_dvc_can_drop_any_key_of_params_yaml_and_the_file_stays_yaml(tmp_path):
    """``dvc exp run -S '~KEY'`` rewrites params.yaml through its YAML round trip; a comment on or below a
    section's line would come back as a corrupt file."""
    from dvc.utils.hydra import apply_overrides

    original = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in dotted_keys(original):
        path = tmp_path / key / "params.yaml"
        path.parent.mkdir()
        path.write_text((REPO / "params.yaml").read_text())
        apply_overrides(str(path), [f"~{key}"])
        assert yaml.safe_load(path.read_text()) == without(original, key), key
        if key.startswith("members.") or (key.startswith("test_sources.") and key.count(".") == 1):
            # a member, a member's change or a test source: what is left is a complete set of settings
            load_params(path)
            continue
        with pytest.raises(FaceageError, match=rf"missing key\(s\) [^\n]*{key.rpartition('.')[2]}"):
            load_params(path)


@pytest.mark.parametrize(
    ("override", "members"),
    [
        ("~members.mobilenet112", {}),
        ("+members.mobilenet112.train.head_epochs=1", {"mobilenet112": {"epochs": 8, "head_epochs": 1}}),
        ("+members.wide.model.input_size=160", {"mobilenet112": {"epochs": 8}, "wide": {}}),
    ],
)
def test_members_are_dropped_and_changed_from_the_command_line(tmp_path, override, members):
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(path), [override])
    loaded = load_params(path)
    assert {name: member.train for name, member in loaded.members.items()} == members


@pytest.mark.parametrize(("written", "value"), [("auto", "auto"), ("true", True), ("false", False)])
def test_cpu_bf16_is_auto_true_or_false(tmp_path, written, value):
    path = tmp_path / "params.yaml"
    overlay(path, f"train:\n  cpu_bf16: {written}\n")
    assert load_params(path).train.cpu_bf16 == value


@pytest.mark.parametrize("written", ["1", "0", "yes_please", "bf16", "[true]"])
def test_cpu_bf16_refuses_anything_else_in_one_line(tmp_path, written):
    path = tmp_path / "params.yaml"
    overlay(path, f"train:\n  cpu_bf16: {written}\n")
    with pytest.raises(FaceageError, match=r"train\.cpu_bf16: .* expected one of auto, true, false$"):
        load_params(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  backbone: vgg19\n", "model.backbone: 'vgg19' is not allowed; expected one of resnet18"),
        ("train:\n  freeze: layer99\n", "train.freeze: 'layer99' is not allowed; expected none, backbone or a block"),
        ("model:\n  backbone: mobilenet_v2\ntrain:\n  freeze: layer4\n", "train.freeze: 'layer4' is not allowed"),
        ("model:\n  backbone: resnet18\ntrain:\n  freeze: features.3\n", "train.freeze: 'features.3'"),
        ("members:\n  m:\n    model:\n      backbone: vgg19\n", "model.backbone: 'vgg19'"),
        ("members:\n  m:\n    train:\n      freeze: layer99\n", "members.m: train.freeze: 'layer99'"),
    ],
)
def test_backbones_and_freeze_points_are_checked_when_params_load(tmp_path, text, message):
    overlay(tmp_path / "params.yaml", text)
    with pytest.raises(FaceageError) as error:
        load_params(tmp_path / "params.yaml")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("backbone", "freeze"),
    [("resnet18", "layer4"), ("resnet50", "layer4.1"), ("mobilenet_v2", "features.14"), ("mobilenet_v2", "features")],
)
def test_freeze_points_at_or_below_a_block_are_accepted(tmp_path, backbone, freeze):
    text = f"model:\n  backbone: {backbone}\ntrain:\n  freeze: {freeze}\nmembers: {{}}\n"  # no other backbone
    overlay(tmp_path / "params.yaml", text)
    assert load_params(tmp_path / "params.yaml").train.freeze == freeze
