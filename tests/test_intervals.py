"""Calibrated intervals: the conformal quantile, coverage on held-out faces, the monotone correction, threshold
decisions and challenge ages, and the same intervals from every door of the model."""

import dataclasses
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import settings, synthetic_faces

from faceage.errors import FaceageError
from faceage.evaluation.intervals import challenge_buffer, challenge_rates, coverage_report, threshold_rates
from faceage.model.age_model import AgeModel
from faceage.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from faceage.model.inference import predict
from faceage.model.intervals import (
    AgeGroups,
    Calibration,
    IntervalHead,
    PiecewiseLinear,
    age_group_quantiles,
    conformal_quantile,
    interval_text,
    over_decisions,
)
from faceage.report_sections import IntervalParams
from faceage.sections import AugmentParams, ModelParams, TrainParams
from faceage.training.calibrate import calibrate, fit_correction
from faceage.training.loop import train_network
from faceage.training.setup import TrainingSetup

CPU = torch.device("cpu")


def coverage_bound(level: float, calibration: int, test: int, sigmas: float = 4.0) -> float:
    """How far a split-conformal interval's coverage on ``test`` new faces may stray from ``level``: its coverage
    given the calibration faces is Beta-distributed around ``level`` (variance ~ level(1 - level)/(n + 2)), and
    the test faces add binomial noise (level(1 - level)/test); ``sigmas`` standard deviations of both, plus the
    1/(n + 1) by which the guarantee may exceed ``level``."""
    variance = level * (1 - level) * (1 / (calibration + 2) + 1 / test)
    return sigmas * math.sqrt(variance) + 1 / (calibration + 1)


def test_the_conformal_quantile_is_the_ceil_n_plus_1_level_th_smallest_score():
    scores = np.array([0.7, 0.1, 2.5, 0.4, 1.9, 0.3, 1.1, 0.9, 3.2])  # sorted: .1 .3 .4 .7 .9 1.1 1.9 2.5 3.2
    assert conformal_quantile(scores, 0.8) == 2.5  # ceil(10 x 0.8) = 8th
    assert conformal_quantile(scores, 0.5) == 0.9  # ceil(10 x 0.5) = 5th
    assert conformal_quantile(scores, 0.9) == 3.2  # ceil(10 x 0.9) = 9th: the largest
    too_few = r"(\d+) calibration faces cannot calibrate a (\d+)% interval: it needs at least (\d+)"
    for faces, level, needed in ((scores, 0.95, 19), (scores[:8], 0.9, 9)):
        with pytest.raises(FaceageError, match=too_few) as refused:
            conformal_quantile(faces, level)
        assert re.search(too_few, str(refused.value)).groups() == (str(len(faces)), f"{level * 100:.0f}", str(needed))


def test_piecewise_linear_is_numpy_interp_and_constant_beyond_its_knots():
    knots = ((2.0, 10.0, 30.0, 80.0), (3.0, 9.0, 35.0, 70.0))
    t = np.array([-5, 2, 5.5, 10, 29.9, 50, 80, 200], dtype=np.float32)
    got = PiecewiseLinear(knots)(torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(got, np.interp(t, *knots), rtol=1e-6)
    np.testing.assert_array_equal(PiecewiseLinear(((5.0,), (4.0,)))(torch.from_numpy(t)).numpy(), np.full(8, 4.0))


@pytest.mark.parametrize("spread", ["distribution", "age", "fixed"])
def test_intervals_cover_the_level_on_held_out_faces_and_adapt_to_the_face(spread):
    """Faces whose error grows with age, as real ones do: calibrated on 400 of them, tested on 4000 others."""
    rng = np.random.default_rng(0)

    def faces(count):
        true = rng.uniform(1, 90, count)
        scale = 0.5 + true / 10  # 0.6 years at 1, 9.5 at 90
        return {"age": true + rng.normal(0, scale), "distribution_spread": scale * rng.uniform(0.8, 1.25, count)}, true

    calibration_faces, calibration_true = faces(400)
    test_faces, test_true = faces(4000)
    base = Calibration(0.9, spread, 1.0, 1.0, 400, True, age_spread=((5.0, 45.0, 85.0), (1.0, 4.0, 7.0)))
    unclipped = (-100, 200)  # an age range wide enough that no interval is cut: the widths are the spread's
    quantile = conformal_quantile(IntervalHead(base, unclipped).scores(calibration_faces, calibration_true), 0.9)
    bounds = IntervalHead(dataclasses.replace(base, quantile=quantile), unclipped).on_arrays(test_faces)
    report = coverage_report(test_true, bounds["age_low"], bounds["age_high"], (1, 20, 60), 0.9)
    assert abs(report["coverage"] - 0.9) <= coverage_bound(0.9, 400, 4000)
    young, old = report["buckets"]["1-19"]["width"], report["buckets"]["60+"]["width"]
    assert (young < old / 3) if spread != "fixed" else young == pytest.approx(old, rel=0.05)


def test_age_group_quantiles_are_each_groups_own_and_too_small_groups_join_the_next_older():
    scores = np.arange(1, 41, dtype=float)  # face i's score is i + 1
    ages = np.array([2] * 12 + [8] * 5 + [15] * 6 + [40] * 14 + [70] * 3)
    starts, quantiles = age_group_quantiles(scores, ages, (6, 13, 19, 31, 200), 0.8, (1, 100))
    # 0.8 needs 4 faces: 1-5 (12 faces) alone; 6-12 (5) alone; 13-18 (6) alone; 19-30 has none and joins 31-...;
    # the oldest faces (70, 3 of them) sit in that group too; 200 is beyond the age range and starts no group
    assert starts == (1.0, 6.0, 13.0, 19.0)
    assert quantiles == (
        11.0,
        17.0,
        23.0,
        38.0,
    )  # ceil((n + 1) 0.8)-th of each: 11th of 12, 5th of 5, 6th of 6, 15th of 17 (24..40)
    assert age_group_quantiles(scores, ages, (), 0.8, (1, 100)) == ((1.0,), (conformal_quantile(scores, 0.8),))
    with pytest.raises(FaceageError, match="3 calibration faces cannot calibrate a 80% interval"):
        age_group_quantiles(scores[:3], ages[:3], (6,), 0.8, (1, 100))


def test_age_group_bounds_are_the_hull_of_the_ages_each_group_lets_in():
    """On 500 random faces, ages and spreads: the bounds are those of a fine grid of candidate ages, each let in
    when within its group's quantile x spread of the face's age."""
    rng = np.random.default_rng(3)
    knots = ((1.0, 13.0, 19.0, 61.0), (0.8, 2.5, 1.2, 1.9))
    age, spread = rng.uniform(1, 100, 500), rng.uniform(0.05, 12, 500)
    low, high = (v.numpy() for v in AgeGroups(knots, (1, 100))(torch.tensor(age), torch.tensor(spread)))
    grid = np.linspace(1, 100, 99 * 100 + 1)  # 0.01-year steps
    quantile = np.array(knots[1])[np.searchsorted(knots[0], grid, side="right") - 1]
    inside = np.abs(grid - age[:, None]) <= quantile * spread[:, None]
    assert inside.any(1).all()  # every face's own age is let in
    np.testing.assert_allclose(low, np.where(inside, grid, np.inf).min(1), atol=0.011)
    np.testing.assert_allclose(high, np.where(inside, grid, -np.inf).max(1), atol=0.011)


def test_intervals_per_age_group_hold_the_level_in_every_group_where_one_quantile_does_not():
    """Teenagers estimated older than they are, as real ones are: one quantile leaves them under-covered, one
    quantile per true-age group covers each group at the level."""
    rng = np.random.default_rng(0)

    def faces(count):
        true = rng.uniform(1, 90, count)
        teen = (true >= 13) & (true < 19)
        return {"age": true + rng.normal(0, 3, count) + 6 * teen, "distribution_spread": np.full(count, 3.0)}, true

    firsts, level, edges = (13, 19), 0.9, (1, 13, 19, 91)
    calibration_faces, calibration_true = faces(3000)
    test_faces, test_true = faces(20000)
    base = Calibration(level, "distribution", 1.0, 1.0, 3000, True)
    scores = IntervalHead(base, (1, 90)).scores(calibration_faces, calibration_true)
    marginal = dataclasses.replace(base, quantile=conformal_quantile(scores, level))
    grouped = dataclasses.replace(
        marginal, age_group_quantiles=age_group_quantiles(scores, calibration_true, firsts, level, (1, 90))
    )
    counts = np.histogram(calibration_true, edges)[0]
    for calibration, holds in ((marginal, False), (grouped, True)):
        bounds = IntervalHead(calibration, (1, 90)).on_arrays(test_faces)
        report = coverage_report(test_true, bounds["age_low"], bounds["age_high"], edges[:-1], level)
        for (label, row), count in zip(report["buckets"].items(), counts, strict=True):
            within = abs(row["coverage"] - level) <= coverage_bound(level, count, row["count"])
            assert within == holds or label != "13-18", (label, row)
            assert within or not holds, (label, row)


def test_threshold_rates_and_decisions_as_counted_by_hand():
    true = np.array([10, 15, 17, 17, 18, 20, 25, 40])
    predicted = np.array([12, 19, 16, 18.5, 17, 21, 24, 39])
    low = np.array([8, 18, 12, 14, 13, 18, 19, 33])
    high = np.array([16, 24, 20, 23, 21, 24, 29, 45])
    decisions = ["no", "yes", "uncertain", "uncertain", "uncertain", "yes", "yes", "yes"]
    assert list(over_decisions(low, high, 18)) == decisions
    rates = threshold_rates(true, predicted, low, high, 18)
    # under 18: 10, 15, 17, 17 (4 faces); estimated 18 or more: 15 (19) and 17 (18.5) -> 2 of 4
    # 18 or over: 18, 20, 25, 40 (4 faces); estimated under 18: 18 (17) -> 1 of 4
    # interval rule: under 18 called yes: 15 -> 1 of 4; left uncertain: 17, 17 -> 2 of 4
    # 18 or over called no: none; left uncertain: 18 -> 1 of 4
    assert rates == {
        "under_faces": 4,
        "over_faces": 4,
        "point_under_called_over": 0.5,
        "point_over_called_under": 0.25,
        "interval_under_called_over": 0.25,
        "interval_under_uncertain": 0.5,
        "interval_over_called_under": 0.0,
        "interval_over_uncertain": 0.25,
    }


def test_the_challenge_age_lets_through_at_most_the_set_share_of_faces_under_the_threshold():
    estimates_under_18 = np.array([10.0, 12, 14, 15, 16, 17, 18.2, 19.0, 20.04, 23.5])  # 10 faces under 18
    assert challenge_buffer(estimates_under_18, 18, 0.1) == 2.1  # at most 1 at 18 + B or more: B > 20.04 - 18
    assert challenge_buffer(estimates_under_18, 18, 0.2) == 1.1  # at most 2: B > 19.0 - 18, to 0.1 years
    assert challenge_buffer(estimates_under_18, 18, 0.01) == 5.6  # none: above the largest, 23.5
    assert challenge_buffer(np.array([10.0, 11.0]), 18, 0.01) == 0.0  # all under already
    assert challenge_buffer(np.array([]), 18, 0.01) is None
    for rate in (0.01, 0.1, 0.2, 0.5):
        buffer = challenge_buffer(estimates_under_18, 18, rate)
        assert (estimates_under_18 >= 18 + buffer).mean() <= rate
        assert (estimates_under_18 >= 18 + buffer - 0.1).mean() > rate or buffer == 0
    true, predicted = np.array([15, 17, 18, 30]), np.array([21.0, 17.5, 19.0, 35.0])
    assert challenge_rates(true, predicted, 18, 2.0) == {
        "challenge_age": 20.0,
        "buffer": 2.0,
        "under_at_or_above": 0.5,  # 15 estimated 21
        "over_below": 0.5,  # 18 estimated 19
    }


def test_interval_text_rounds_outward_to_whole_years():
    assert interval_text(26.4, 36.2) == "26-37"
    assert interval_text(3.0, 5.0) == "3-5"


def test_the_monotone_correction_is_kept_only_where_it_lowers_the_cross_fitted_error():
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 90, 600)
    pulled = 40 + 0.6 * (true - 40) + rng.normal(0, 2, 600)  # children look older, old faces younger
    knots, report = fit_correction(pulled, true, settings(IntervalParams))
    assert report["kept"] and report["val_mae_corrected"] < report["val_mae"] - 3
    corrected = np.interp(pulled, *knots)
    assert np.abs(corrected - true).mean() < np.abs(pulled - true).mean() / 2
    honest = true + rng.normal(0, 2, 600)
    assert fit_correction(honest, true, settings(IntervalParams))[0] is None


ONE_QUANTILE = {"age_groups": (), "calibrate_with_val": False}  # one quantile, of the calibration faces only


@pytest.fixture(scope="module")
def calibrated_on_synthetic_faces(tmp_path_factory):
    """A network trained briefly on faces whose brightness follows their age, calibrated on 300 faces, and 1200
    held-out test faces."""
    images, ages, genders, split = synthetic_faces(2100, 32, 0, train=400, val=200)
    split.loc[600:899, "split"] = "calibration"
    setup = TrainingSetup(
        images,
        ages,
        genders,
        split,
        settings(ModelParams, backbone="resnet18", pretrained=False, input_size=32, reference_blend=(0.0,)),
        settings(TrainParams, head_epochs=0, epochs=2, batch_size=32, lr=0.003),
        settings(AugmentParams, in_head_stage=False, erasing=0.0),
        (1, 100),
    )
    model = AgeModel.of(train_network(setup, CPU).network, 32)
    report = calibrate(
        model,
        images,
        ages,
        np.arange(400, 600),
        np.arange(600, 900),
        settings(IntervalParams, **ONE_QUANTILE),
        64,
        CPU,
        True,
    )
    return model, images, ages, report


def test_calibrated_per_age_group_on_validation_and_calibration_faces(calibrated_on_synthetic_faces):
    """The default settings: the validation faces calibrate too, a quantile per true-age group, each that of its
    group's faces."""
    model, images, ages, _ = calibrated_on_synthetic_faces
    single = model.calibration
    params = settings(IntervalParams)
    try:
        report = calibrate(model, images, ages, np.arange(400, 600), np.arange(600, 900), params, 64, CPU, True)
        calibration = model.calibration
    finally:
        model.calibrate(single)
    assert calibration.faces == report["calibration_faces"] == 500 and calibration.shared
    assert report["calibrated_on"] == ["val", "calibration"]
    model.calibrate(None)
    outputs = predict(model, images, np.arange(400, 900), 64, CPU, flip=True)
    model.calibrate(single)
    raw = dataclasses.replace(calibration, quantile=1.0, age_group_quantiles=None)
    scores = IntervalHead(raw, model.age_range).scores(outputs, ages[400:900])
    starts, quantiles = calibration.age_group_quantiles
    assert starts[0] == model.age_range[0] and set(starts[1:]) <= set(params.age_groups)
    for first, end, quantile in zip(starts, (*starts[1:], 1000), quantiles, strict=True):
        group = np.sort(scores[(ages[400:900] >= first) & (ages[400:900] < end)])
        assert quantile == pytest.approx(group[math.ceil((len(group) + 1) * 0.9) - 1], rel=1e-6)


def test_calibration_uses_only_its_faces_and_its_quantile_is_theirs(calibrated_on_synthetic_faces):
    model, images, ages, report = calibrated_on_synthetic_faces
    calibration = model.calibration
    assert report["spread"] == calibration.spread and calibration.faces == 300
    raw = dataclasses.replace(calibration, quantile=1.0)
    model.calibrate(None)
    outputs = predict(model, images, np.arange(600, 900), 64, CPU, flip=True)
    model.calibrate(calibration)
    scores = np.sort(IntervalHead(raw, model.age_range).scores(outputs, ages[600:900]))
    assert calibration.quantile == pytest.approx(scores[math.ceil(301 * 0.9) - 1], rel=1e-6)  # the 271st of 300


def test_intervals_hold_the_level_on_held_out_synthetic_faces(calibrated_on_synthetic_faces):
    model, images, ages, _ = calibrated_on_synthetic_faces
    test = predict(model, images, np.arange(900, 2100), 64, CPU, flip=True)
    inside = (test["age_low"] <= ages[900:]) & (ages[900:] <= test["age_high"])
    assert abs(inside.mean() - 0.9) <= coverage_bound(0.9, 300, 1200)
    assert (test["age_high"] - test["age_low"]).mean() < 80  # informative: narrower than the age range


@pytest.mark.parametrize("grouped", [None, ((1.0, 40.0, 50.0), (0.5, 1.5, 0.9))], ids=["one quantile", "age groups"])
def test_the_calibration_survives_the_checkpoint_and_the_exported_graph_gives_the_same_intervals(
    tiny_model, tmp_path, grouped
):
    """A correction and an age-dependent spread (both piecewise-linear) written by hand into a model: the
    checkpoint reads them back, and ONNX gives the intervals PyTorch gives."""
    from conftest import assert_onnx_export_predicts_as_the_model

    calibration = Calibration(
        0.8,
        "age",
        1.7,
        9.0,
        50,
        True,
        correction=((30.0, 45.0, 47.5, 60.0), (20.0, 44.0, 52.0, 70.0)),
        age_spread=((20.0, 50.0, 70.0), (2.0, 6.0, 9.0)),
        age_group_quantiles=grouped,
    )
    path = tmp_path / "model.pt"
    save_checkpoint(dataclasses.replace(read_checkpoint(tiny_model), calibration=calibration), path)
    assert read_checkpoint(path).calibration == calibration
    model, _ = load_model(path, CPU)
    chips = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    outputs = predict(model, chips, np.arange(6), 8, CPU, flip=True)
    model.calibrate(None)
    raw = predict(model, chips, np.arange(6), 8, CPU, flip=True)["age"]
    corrected = np.interp(raw, *calibration.correction)
    np.testing.assert_allclose(outputs["age"], corrected, atol=1e-4)
    half = 1.7 * np.interp(corrected, *calibration.age_spread)
    if grouped is None:
        np.testing.assert_allclose(outputs["age_high"] - outputs["age"], half, atol=1e-4)
    else:
        bounds = AgeGroups(grouped, model.age_range)(torch.tensor(corrected), torch.tensor(half / 1.7))
        np.testing.assert_allclose([outputs["age_low"], outputs["age_high"]], [b.numpy() for b in bounds], atol=1e-4)
    assert_onnx_export_predicts_as_the_model(path, chips, tmp_path)


def test_a_model_of_several_networks_offers_their_disagreement_as_a_spread():
    networks = [
        settings(ModelParams, backbone="mobilenet_v3_small", pretrained=False, input_size=32, reference_blend=(0.0,))
    ] * 2
    from faceage.model.networks import build_network

    torch.manual_seed(0)
    model = AgeModel([build_network(p, (1, 100)) for p in networks], [32, 32], 0.0, (1, 100), 32).eval()
    chips = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    outputs = predict(model, chips, np.arange(4), 4, CPU)
    ages = [predict(AgeModel.of(n, 32), chips, np.arange(4), 4, CPU)["age"] for n in model.networks]
    np.testing.assert_allclose(outputs["members_spread"], np.abs(ages[0] - ages[1]) / 2, rtol=1e-4)
    assert (outputs["distribution_spread"] > 0).all()
    frame = pd.DataFrame(outputs)
    assert {"age", "members_spread", "distribution_spread"} <= set(frame)
