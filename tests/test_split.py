import numpy as np
import pandas as pd
import pytest
from conftest import settings

from faceage.data.split import split_manifest, split_report
from faceage.errors import FaceageError
from faceage.sections import SplitParams


def make_manifest(n=600, duplicates=40, given=None, seed=0):
    rng = np.random.default_rng(seed)
    ages = np.clip(rng.gamma(3, 12, n).round(), 1, 100).astype(int)
    hashes = [f"h{i}" for i in range(n)]
    for i in range(duplicates):  # pairs of pixel-identical images
        hashes[n - 1 - i] = hashes[i]
        ages[n - 1 - i] = ages[i]
    frame = pd.DataFrame({"id": range(n), "age": ages, "pixel_hash": hashes})
    frame["given_split"] = pd.Series(given if given is not None else [pd.NA] * n, dtype="string")
    return frame


def test_every_image_lands_in_exactly_one_split():
    manifest = make_manifest()
    split = split_manifest(manifest, settings(SplitParams))
    assert split["id"].tolist() == manifest["id"].tolist()
    assert set(split["split"]) == {"train", "val", "calibration", "test"}


def test_proportions_follow_the_parameters():
    fractions = {"train": 0.6, "val": 0.15, "calibration": 0.05, "test": 0.2}
    counts = split_manifest(make_manifest(1000), settings(SplitParams, **fractions))["split"].value_counts()
    for name, fraction in fractions.items():
        assert abs(counts[name] - 1000 * fraction) <= 10, name


def test_calibration_faces_come_out_of_validation_and_leave_train_and_test_as_they_were():
    manifest = make_manifest(1000)
    with_calibration = split_manifest(manifest, settings(SplitParams, val=0.10, calibration=0.05))
    without = split_manifest(manifest, settings(SplitParams, val=0.15 - 1e-9, calibration=1e-9))
    for name in ("train", "test"):
        assert (with_calibration["split"] == name).equals(without["split"] == name)
    moved = with_calibration["split"] == "calibration"
    assert moved.sum() > 30 and (without.loc[moved, "split"] == "val").all()


def test_same_seed_same_split_other_seed_other_split():
    manifest = make_manifest()
    first = split_manifest(manifest, settings(SplitParams, seed=1))
    assert first.equals(split_manifest(manifest, settings(SplitParams, seed=1)))
    assert not first.equals(split_manifest(manifest, settings(SplitParams, seed=2)))


def test_split_is_stratified_on_age():
    manifest = make_manifest(1000, duplicates=0)
    split = manifest.merge(split_manifest(manifest, settings(SplitParams, stratify_bins=10)), on="id")
    deciles = pd.qcut(split["age"].rank(method="first"), 10, labels=False)
    shares = pd.crosstab(deciles, split["split"], normalize="index")
    assert (shares["train"] - 0.70).abs().max() < 0.02
    assert (shares["test"] - 0.15).abs().max() < 0.02


def test_duplicates_never_straddle_two_splits():
    manifest = make_manifest(300, duplicates=100)
    split = manifest.merge(split_manifest(manifest, settings(SplitParams)), on="id")
    assert (split.groupby("pixel_hash")["split"].nunique() == 1).all()


def test_given_split_is_kept_and_val_is_carved_from_given_train():
    n = 1600
    given = ["test" if i % 4 == 0 else "train" for i in range(n)]
    manifest = make_manifest(n, duplicates=0, given=given)
    split = split_manifest(manifest, settings(SplitParams))
    assert (split.loc[manifest["given_split"] == "test", "split"] == "test").all()
    from_train = split.loc[manifest["given_split"] == "train", "split"].value_counts()
    assert set(from_train.index) == {"train", "val", "calibration"}
    assert abs(from_train["val"] / from_train.sum() - 0.10 / 0.85) < 0.03
    assert abs(from_train["calibration"] / from_train.sum() - 0.05 / 0.85) < 0.02


def test_calibration_is_carved_from_a_given_validation_split():
    given = ["test" if i % 4 == 0 else "val" if i % 4 == 1 else "train" for i in range(400)]
    manifest = make_manifest(400, duplicates=0, given=given)
    split = split_manifest(manifest, settings(SplitParams))
    assert (split.loc[manifest["given_split"] == "train", "split"] == "train").all()
    from_val = split.loc[manifest["given_split"] == "val", "split"].value_counts()
    assert set(from_val.index) == {"val", "calibration"}
    assert abs(from_val["calibration"] / from_val.sum() - 0.05 / 0.15) < 0.05


def test_given_split_can_be_ignored():
    manifest = make_manifest(400, duplicates=0, given=["test"] * 400)
    split = split_manifest(manifest, settings(SplitParams, use_given=False))
    assert split["split"].value_counts()["train"] > 250


def test_fractions_must_sum_to_one():
    where = r"split.train \+ split.val \+ split.calibration \+ split.test"
    with pytest.raises(FaceageError, match=rf"{where}: 1.2 is not allowed; expected 1"):
        settings(SplitParams, train=0.8, val=0.15, calibration=0.05, test=0.2)


def test_report_counts_and_statistics():
    manifest = make_manifest(200, duplicates=0)
    split = split_manifest(manifest, settings(SplitParams))
    report = split_report(manifest, split)
    assert report["total"] == 200
    assert sum(report[s]["count"] for s in ("train", "val", "calibration", "test")) == 200
    test_ages = manifest.loc[split["split"] == "test", "age"]
    assert report["test"]["age_mean"] == round(test_ages.mean(), 2)
    assert report["test"]["age_min"] == test_ages.min()
