"""The benchmark's markdown table."""

from __future__ import annotations

from faceage.evaluation.intervals import level_held

# Published figures, not measured here (the issue that asked for this benchmark cites them).
PUBLISHED = [
    ("published project, ResNet-34 (its own data)", 5.84),
    ("published project, ResNet-50 (its own data)", 7.07),
    ("literature: ResNet-50, ImageNet weights, GPU, 256 px, UTKFace", 4.77),
]


ENGINE_NAMES = {
    "pytorch": "PyTorch (the checkpoint)",
    "onnxruntime": "ONNX Runtime (the exported graph)",
    "onnxruntime_int8": "ONNX Runtime (the int8 graph)",
}


def default_engine(int8: dict | None) -> str:
    """The engine predict runs when no model is named: the export stage's graph, int8 where its check (``int8``,
    ``None`` where int8 is off) kept it."""
    return "onnxruntime_int8" if int8 and int8["kept"] else "onnxruntime"


def interval(metric: dict, scale: float = 1.0, digits: int = 2) -> str:
    """``4.21 [4.05, 4.38]``."""
    value, low, high = (metric[key] * scale for key in ("value", "ci_low", "ci_high"))
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def model_description(params: dict) -> str:
    """The benchmarked model: its network's backbone and input size (each member's, for an ensemble) and head."""
    networks = [params["model"], *({**params["model"], **member["model"]} for member in params["members"].values())]
    names = " + ".join(f"{network['backbone']}, {network['input_size']} px" for network in networks)
    return f"{names}{' (ensemble)' if len(networks) > 1 else ''}, {params['model']['head']} head"


def markdown_report(report: dict) -> str:
    """Summary table, per-bucket table and the hardware, as markdown."""
    ours, peer, baseline = report["pipeline"], report["peer"], report["baseline"]
    default_name = default_engine(report["int8"])
    default = report["engines"][default_name]
    cs = next(key for key in ours["test"] if key.startswith("cs"))
    bf16 = report["baseline_bf16"]
    bf16_rows = (
        [f"| the same loop under bfloat16 autocast | | | {bf16['images_per_second']:.0f} | | | |"] if bf16 else []
    )
    vs_bf16 = (
        f"Against the same loop under bfloat16 autocast: {report['throughput_ratio_vs_bf16_baseline']:.2f}x over the "
        "whole training. "
        if bf16
        else ""
    )
    lines = [
        f"UTKFace test split ({ours['test']['count']} images); 95 % bootstrap intervals in brackets.",
        "",
        f"| model | test MAE | {cs.upper()} % | train img/s | batch inference img/s | one image (median) | dvc repro |",
        "|---|---|---|---|---|---|---|",
        f"| faceage: {model_description(report['params'])}"
        f" | {interval(ours['test']['mae'])} | {interval(ours['test'][cs], 100, 1)}"
        f" | {ours['train_images_per_second']:.0f}"
        f" | {default['faces_per_second']:.0f}"
        f" | {default['single_image']['median_ms']:.1f} ms"
        f" | {ours['dvc_repro_seconds'] / 60:.1f} min |",
        f"| plain baseline loop (same model and settings, float32) | | | {baseline['images_per_second']:.0f} | | | |",
        *bf16_rows,
        f"| peer: {peer['package']} (own face detection) | {interval(peer['test']['mae'])}"
        f" | {interval(peer['test'][cs], 100, 1)} | | {peer['images_per_second']:.0f} (1 thread) | | |",
        *(f"| {name} (published) | {mae:.2f} | | | | | |" for name, mae in PUBLISHED),
        "",
        f"Training throughput: {report['throughput_ratio']:.2f}x the plain baseline loop over the main network's "
        f"training ({ours['epochs_run']} epochs of {ours['train_images']} images in "
        f"{ours['main_train_seconds'] / 60:.1f} min, "
        "validation included, against a projected "
        f"{baseline['projected_train_seconds'] / 60:.1f} min); per fine-tuning step "
        f"{report['step_throughput_ratio']:.2f}x ({ours['finetune_images_per_second']:.0f} against "
        f"{baseline['images_per_second']:.0f} img/s). {vs_bf16}"
        "Batch inference and one image: the default model as predict runs it, "
        f"{ENGINE_NAMES[default_name]} (below); the evaluate stage, in float32 "
        f"on every CPU and decoding included, predicted {ours['batch_inference_images_per_second']:.0f} img/s. "
        f"Peer faces detected: {peer['faces_detected']} of {peer['test']['count']} (whole image used otherwise).",
        "",
        "| age bucket | images | faceage MAE | peer MAE |",
        "|---|---|---|---|",
    ]
    for bucket, row in ours["test"]["buckets"].items():
        theirs = peer["test"]["buckets"][bucket]["mae"]
        mae = "" if row["mae"] is None else f"{row['mae']:.2f}"
        lines.append(f"| {bucket} | {row['count']} | {mae} | {'' if theirs is None else f'{theirs:.2f}'} |")
    hw = report["hardware"]
    lines += engine_lines(report["engines"])
    lines += int8_lines(report["int8"], report["engines"])
    lines += held_lines(report["engines_held_to_avx2"])
    lines += mirror_lines(ours.get("mirror_images", {}))
    lines += photo_lines(report["photos"])
    lines += source_lines(ours.get("sources", {}))
    lines += interval_lines(ours)
    for face in report["astronaut"].get("faces", ()):
        lines += [
            "",
            f"The astronaut photo (`tests/data/astronaut.jpg`): {face['age']} ({face['interval']}), "
            f"over 18: {face['over']}.",
        ]
    lines += [
        "",
        f"Hardware: {hw['cpu']}, {hw['cpu_cores']} cores, torch {hw['torch']} with {hw['torch_threads']} "
        f"threads, GPU: {hw['gpu'] or 'none'}. CPU class: {hw['cpu_capability']} kernels, "
        f"{'native' if hw['native_bf16'] else 'no native'} bfloat16; training precision {hw['precision']}.",
    ]
    return "\n".join(lines) + "\n"


def photo_lines(photos: dict) -> list[str]:
    """The paragraph on the test faces made into photos."""
    width, height = photos["photo_size"]
    scored = next(iter(photos["engines"]))  # the engine whose ages and speed are the paragraph's
    made = (
        f"{photos['photos']} test faces pasted into {width}x{height} photos (turned up to {photos['max_angle']:g} "
        f"degrees, scaled {photos['scales'][0]:g}-{photos['scales'][1]:g}x)"
    )
    accuracy = (
        f"MAE on the photos ({ENGINE_NAMES[scored]}) {interval(photos['mae_photos'])} against "
        f"{interval(photos['mae_crops_same_faces'])} on the same faces' crops (paired difference "
        f"{interval(photos['mae_difference'])}); "
        if "mae_photos" in photos
        else ""
    )
    return [
        "",
        f"Photos: {made}; faces found in {photos['detected']} ({photos['detection_rate']:.1%}). {accuracy}"
        f"all crops: {interval(photos['mae_crops_all'])}. End to end under {ENGINE_NAMES[scored]} (read, decode, "
        f"detect, align, predict; {photos['workers']} processes): {photos['photos_per_second']:.1f} photos/s against "
        "the peer's "
        f"{photos['peer_photos_per_second']:.1f} (its own detection, 1 process) on the same photos: "
        f"{photos['speed_ratio']:.2f}x. Peer MAE on the photos {photos['peer_mae_photos']:.2f} "
        f"(its faces found in {photos['peer_faces_detected']}).",
        "",
        *(engine_photo_line(name, engine, photos["profile_photos"]) for name, engine in photos["engines"].items()),
        f"- Reading and decoding alone ({photos['workers']} processes): {photos['decode_only_photos_per_second']:.1f} "
        "photos/s, the limit of any end-to-end speed here.",
    ]


def engine_photo_line(name: str, engine: dict, profiled: int) -> str:
    """One engine's end-to-end speed on the photos and where each photo's time goes."""
    steps = ", ".join(f"{step.replace('_', ' ')} {ms:.1f}" for step, ms in engine["profile"]["ms_per_photo"].items())
    return (
        f"- {ENGINE_NAMES[name]}: {engine['photos_per_second']:.1f} photos/s end to end ({engine['speed_ratio']:.2f}x "
        f"the peer); per photo in one process (first {profiled} photos): {steps} ms (total "
        f"{engine['profile']['total_ms_per_photo']:.1f} ms)."
    )


def speeds(engine: dict) -> str:
    """An engine's batch and one-image speed."""
    return f"{engine['faces_per_second']:.0f} faces/s, one image {engine['single_image']['median_ms']:.1f} ms"


def ratios(ratio: dict) -> str:
    """Speed ratios, batch and one image."""
    return f"{ratio['batch_ratio']:.2f}x in batches, {ratio['single_image_ratio']:.2f}x one image"


def gap(difference: dict) -> str:
    """How far apart two engines' ages are."""
    return f"{difference['mean']:.5f} years on average, {difference['max']:.5f} at most"


def against_mirrored(engines: dict) -> str:
    """Each engine's speed ratios to PyTorch in float32 with mirror images averaged."""
    return ", ".join(f"{ENGINE_NAMES[name]} {ratios(ratio)}" for name, ratio in engines["against_mirrored"].items())


def engine_lines(engines: dict) -> list[str]:
    """The network under each engine: batch and one-image speed, and how far apart their ages are."""
    ours, theirs = engines["onnxruntime"], engines["pytorch"]
    return [
        "",
        f"The network on {engines['faces']} test faces (batches of {engines['batch_size']}; one image: decode, "
        f"resize, forward passes; mirror images {'averaged' if engines['flip'] else 'not averaged'}, as the "
        f"model's intervals were calibrated): PyTorch ({theirs['precision']}) {speeds(theirs)}; ONNX Runtime on the "
        f"exported graph {speeds(ours)} ({ratios(engines)}); PyTorch in float32 {speeds(engines['pytorch_float32'])}. "
        f"ONNX Runtime's ages differ from PyTorch's in float32 by {gap(engines['age_difference'])}; PyTorch's "
        f"default from its float32 by {gap(engines['bf16_age_difference'])}. PyTorch in float32 with mirror images "
        f"averaged (the path the speed targets were set against): {speeds(engines['pytorch_mirrored'])}; against "
        f"it, {against_mirrored(engines)}.",
    ]


def int8_lines(int8: dict | None, engines: dict) -> list[str]:
    """The export stage's int8 graph: its check on validation, and where kept its test MAE, speed and age change."""
    where = "int8 (the export stage, as `faceage export --int8`)"
    if int8 is None:
        return ["", f"{where}: off (`export.int8: false`); predict's default graph is in float32."]
    if not int8["kept"]:
        return ["", f"{where}: {int8['summary']}: over the limit; predict's default graph is in float32."]
    mae = int8["test_mae"]
    return [
        "",
        f"{where}: {int8['summary']}: kept as predict's default. Test MAE {mae['float32']:.3f} in float32, "
        f"{mae['int8']:.3f} in int8 ({mae['int8'] - mae['float32']:+.3f}); {speeds(engines['onnxruntime_int8'])}; "
        f"its ages differ from the float32 graph's by {gap(engines['graph_age_differences']['onnxruntime_int8'])}.",
    ]


def held_lines(held: dict) -> list[str]:
    """The engines again in a process whose torch and oneDNN kernels are held to AVX2."""
    pytorch = held["pytorch"]
    return [
        "",
        f"Held to AVX2 (torch's and oneDNN's kernels as on a CPU without AVX-512, in a process of their own: "
        f"capability {held['cpu']['capability']}, {'native' if held['cpu']['native_bf16'] else 'no native'} "
        f"bfloat16; ONNX Runtime picks its kernels from this CPU and is not held): PyTorch ({pytorch['precision']}) "
        f"{speeds(pytorch)}; PyTorch in float32 with mirror images averaged {speeds(held['pytorch_mirrored'])}; "
        f"against it, {against_mirrored(held)}.",
    ]


def mirror_lines(maes: dict) -> list[str]:
    """What averaging each age with its mirror image's buys, per evaluated set."""
    if not maes:
        return []
    sets = "; ".join(
        f"{name} ({row['faces']} faces) {row['with']:.3f} with, {row['without']:.3f} without "
        f"({row['without'] - row['with']:+.3f})"
        + (f", {row['without_bf16']:.3f} without under bfloat16 autocast" if "without_bf16" in row else "")
        for name, row in maes.items()
    )
    return ["", f"Mirror-image averaging (twice the network's work), MAE in float32: {sets}."]


def source_lines(sources: dict) -> list[str]:
    """The test sources' table: the model beside dlib's untouched age model on the same images."""
    if not sources:
        return []
    lines = [
        "",
        "Test sources (faces found and aligned at ingest; age groups <30, 30-59, 60+):",
        "",
        "| test source | faces | MAE | age-group accuracy | dlib untouched: MAE | its accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, report in sources.items():
        reference = report["reference"]
        lines.append(
            f"| {name} | {report['count']} | {interval(report['mae'])} | {report['age_groups']['accuracy']:.1%}"
            f" | {interval(reference['mae'])} | {reference['age_group_accuracy']:.1%} |"
        )
    return lines


def relative_width(width: float, baseline: float) -> str:
    """``width`` against ``baseline`` in words: ``11% narrower`` or ``1% wider``."""
    change = 1 - width / baseline
    return f"{abs(change):.0%} {'narrower' if change >= 0 else 'wider'}"


def interval_lines(ours: dict) -> list[str]:
    """The intervals' coverage and width per age bucket and test source, and the threshold table on test."""
    test, calibration = ours["test"]["intervals"], ours["intervals"]
    fixed, level = test["one_width"], test["level"]
    correction = calibration["correction"]
    corrected = (
        f"the monotone correction kept (cross-fitted validation MAE {correction['val_mae']:.3f} -> "
        f"{correction['val_mae_corrected']:.3f})"
        if correction.get("kept")
        else "no monotone correction (it did not lower the cross-fitted validation MAE)"
    )
    widths = ", ".join(f"{name} {width:.2f}" for name, width in calibration["val_width_by_spread"].items())
    held = level_held(calibration.get("age_group_quantiles"), calibration["quantile"])
    lines = [
        "",
        f"Intervals at {level:.0%}, calibrated on {calibration['calibration_faces']} faces "
        f"({' and '.join(calibration.get('calibrated_on', ['calibration']))} splits; {held}); "
        f"spread {calibration['spread']} (mean validation widths: {widths} years); {corrected}. Test: coverage "
        f"{test['coverage']:.1%}, mean width {test['width']:.2f} years, against one width for all calibrated on the "
        f"same faces: coverage {fixed['coverage']:.1%}, width {fixed['width']:.2f} years "
        f"({relative_width(test['width'], fixed['width'])}).",
        "",
        "| age bucket | test faces | coverage | mean width | one width: coverage | bias |",
        "|---|---|---|---|---|---|",
    ]
    for bucket, row in test["buckets"].items():
        if row["count"]:
            bias = ours["test"]["buckets"][bucket]["bias"]
            lines.append(
                f"| {bucket} | {row['count']} | {row['coverage']:.1%} | {row['width']:.2f} "
                f"| {fixed['buckets'][bucket]['coverage']:.1%} | {bias:+.2f} |"
            )
    lines += ["", "| test source | faces | coverage | mean width |", "|---|---|---|---|"]
    for name, source in ours.get("sources", {}).items():
        if "intervals" in source:
            found = source["intervals"]
            lines.append(f"| {name} | {source['count']} | {found['coverage']:.1%} | {found['width']:.2f} |")
    lines += [
        "",
        "Age thresholds on the test split (shares of the faces under the threshold, then of those at or over it; "
        "challenge age chosen on validation):",
        "",
        "| threshold | under called over: estimate / interval / uncertain | over called under: estimate / interval "
        "/ uncertain | challenge age | under at or above it | over below it |",
        "|---|---|---|---|---|---|",
    ]
    for threshold, rates in ours["test"]["thresholds"].items():
        challenge = ours["test"]["challenge"][threshold]
        keys = ("challenge_age", "under_at_or_above", "over_below")
        chosen = ["n/a"] * 3 if challenge["buffer"] is None else [challenge[key] for key in keys]
        shares = [value if isinstance(value, str) else f"{value:.1%}" for value in chosen[1:]]
        lines.append(
            f"| {threshold} | {rates['point_under_called_over']:.1%} / {rates['interval_under_called_over']:.1%} / "
            f"{rates['interval_under_uncertain']:.1%} | {rates['point_over_called_under']:.1%} / "
            f"{rates['interval_over_called_under']:.1%} / {rates['interval_over_uncertain']:.1%} | "
            f"{chosen[0]} | {shares[0]} | {shares[1]} |"
        )
    return lines
