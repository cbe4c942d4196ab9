import numpy as np
import pandas as pd
import pytest

from faceage.evaluation.metrics import (
    bias,
    bucket_labels,
    bucket_mae,
    cumulative_score,
    group_confusion,
    mae,
    r2,
    rmse,
    subgroup_mae,
    with_interval,
)

TRUE = np.array([10.0, 20.0, 30.0, 40.0])
PREDICTED = np.array([12.0, 18.0, 33.0, 40.0])  # errors +2, -2, +3, 0


def test_point_metrics_match_hand_computed_values():
    assert mae(TRUE, PREDICTED) == pytest.approx(7 / 4)
    assert rmse(TRUE, PREDICTED) == pytest.approx(np.sqrt(17 / 4))
    assert bias(TRUE, PREDICTED) == pytest.approx(3 / 4)
    assert r2(TRUE, PREDICTED) == pytest.approx(1 - 17 / 500)
    assert cumulative_score(2)(TRUE, PREDICTED) == pytest.approx(3 / 4)


def test_bias_is_positive_when_ages_are_overestimated():
    assert bias(TRUE, TRUE + 3) == pytest.approx(3)
    assert bias(TRUE, TRUE - 3) == pytest.approx(-3)


def test_bucket_edges_are_inclusive_as_documented():
    edges = (1, 6, 13)
    assert bucket_labels(edges) == ["1-5", "6-12", "13+"]
    true = np.array([1.0, 5, 6, 12, 13, 90])
    table = bucket_mae(true, true + np.array([1, 1, 2, 2, 3, 3]), edges)
    assert table == {
        "1-5": {"count": 2, "mae": 1.0, "bias": 1.0},
        "6-12": {"count": 2, "mae": 2.0, "bias": 2.0},
        "13+": {"count": 2, "mae": 3.0, "bias": 3.0},
    }
    assert bucket_mae(np.array([3.0]), np.array([3.0]), edges)["13+"] == {"count": 0, "mae": None, "bias": None}
    pulled = bucket_mae(true, np.array([3.0, 6, 7, 11, 12, 80]), edges)  # young up, old down: toward the mean
    assert pulled["1-5"]["bias"] == 1.5 and pulled["13+"]["bias"] == -5.5


def test_interval_contains_the_estimate_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)

    def width(n):
        true = rng.uniform(1, 90, n)
        result = with_interval(mae, true, true + rng.normal(0, 6, n), resamples=500, seed=1, confidence=0.95)
        assert result["ci_low"] <= result["value"] <= result["ci_high"]
        return result["ci_high"] - result["ci_low"]

    assert width(4000) < width(100) / 3


def test_interval_is_reproducible_for_a_seed():
    first = with_interval(mae, TRUE, PREDICTED, resamples=200, seed=3, confidence=0.9)
    assert first == with_interval(mae, TRUE, PREDICTED, resamples=200, seed=3, confidence=0.9)


def test_age_group_confusion_matrix():
    result = group_confusion(np.array([10.0, 30, 60, 80]), np.array([12.0, 20, 70, 60]), (26, 51, 76))
    assert result["accuracy"] == 0.5
    confusion = result["confusion"]
    assert list(confusion) == ["0-25", "26-50", "51-75", "76+"]
    assert confusion["26-50"]["0-25"] == 1 and confusion["76+"]["51-75"] == 1 and confusion["0-25"]["0-25"] == 1
    assert sum(sum(row.values()) for row in confusion.values()) == 4


def test_subgroup_mae_reports_unknown_labels_and_the_largest_gap():
    errors = pd.Series([1.0, -3.0, 2.0, 10.0])
    genders = pd.Series([0, 0, 1, pd.NA], dtype="Int64")
    result = subgroup_mae(errors, genders, {0: "male", 1: "female"})
    assert result["groups"] == {
        "female": {"count": 1, "mae": 2.0},
        "male": {"count": 2, "mae": 2.0},
        "unknown": {"count": 1, "mae": 10.0},
    }
    assert result["largest_gap"]["mae_gap"] == 0.0
    only_unknown = subgroup_mae(errors, pd.Series([pd.NA] * 4, dtype="Int64"), {0: "male"})
    assert only_unknown["groups"] == {"unknown": {"count": 4, "mae": 4.0}} and only_unknown["largest_gap"] is None
