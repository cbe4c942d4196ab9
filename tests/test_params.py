import pytest
from conftest import REPO

from faceage.errors import FaceageError
from faceage.params import Params, load_params


def test_repository_params_are_the_code_defaults():
    """Defaults live in one place: params.yaml spells out exactly the dataclasses' defaults."""
    params = load_params(REPO / "params.yaml")
    assert params.split.train + params.split.val + params.split.test == pytest.approx(1.0)
    assert params == Params()


def test_missing_keys_take_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text("split:\n  seed: 7\n")
    params = load_params(tmp_path / "params.yaml")
    assert params.split.seed == 7 and params.split.train == Params().split.train


def test_unknown_key_is_rejected(tmp_path):
    (tmp_path / "params.yaml").write_text("split:\n  sead: 7\n")
    with pytest.raises(FaceageError, match="unknown key"):
        load_params(tmp_path / "params.yaml")


def test_wrong_type_is_rejected(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: three\n")
    with pytest.raises(FaceageError, match=r"train\.epochs: expected int"):
        load_params(tmp_path / "params.yaml")


def test_integer_is_accepted_for_a_float(tmp_path):
    (tmp_path / "params.yaml").write_text("split:\n  train: 1\n  val: 0\n  test: 0\n")
    assert load_params(tmp_path / "params.yaml").split.train == 1.0
