import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import noise_jpeg

from faceage.cli import main, years_and_months
from faceage.params import AugmentParams, ModelParams, TrainParams
from faceage.train import train_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 24, 24, 3), dtype=np.uint8)
    ages = rng.integers(1, 90, 40)
    split = pd.DataFrame({"id": range(40), "split": ["train"] * 30 + ["val"] * 10})
    result = train_model(
        images,
        ages,
        np.full(40, -1),
        split,
        ModelParams(backbone="resnet18", pretrained=False, input_size=24),
        TrainParams(head_epochs=1, epochs=0, batch_size=16),
        AugmentParams(),
        (1, 100),
        torch.device("cpu"),
    )
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(result.checkpoint, path)
    return path


@pytest.fixture
def files(tmp_path):
    (tmp_path / "face.jpg").write_bytes(noise_jpeg(1, size=60))
    (tmp_path / "broken.jpg").write_bytes(noise_jpeg(2, size=60)[:300])
    return tmp_path / "face.jpg", tmp_path / "broken.jpg"


def test_years_and_months():
    assert years_and_months(34.2) == "34 years 2 months"
    assert years_and_months(0.96) == "1 year 0 months"  # 11.5 months round up to a whole year
    assert years_and_months(2.08) == "2 years 1 month"


def test_predict_prints_each_good_file_and_a_clear_error_for_a_corrupt_one(model_file, files, capsys):
    good, broken = files
    code = main(["predict", str(good), str(broken), str(good.with_name("missing.jpg")), "--model", str(model_file)])
    out, err = capsys.readouterr()
    assert code == 1
    (line,) = out.splitlines()
    assert line.startswith(f"{good}: ") and "years (" in line and "month" in line
    assert f"{broken}: error: unreadable image" in err
    assert "missing.jpg: error: cannot read file" in err


def test_predict_json(model_file, files, capsys):
    good, _ = files
    assert main(["predict", str(good), "--model", str(model_file), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["path"] == str(good) and 1 <= result["age_years"] <= 100


def test_missing_model_is_a_one_line_error(tmp_path, files, capsys):
    assert main(["predict", str(files[0]), "--model", str(tmp_path / "none.pt")]) == 1
    assert capsys.readouterr().err.strip() == f"error: no model at {tmp_path / 'none.pt'}: run the train stage first"


def test_console_script_is_installed(model_file, files):
    command = [str(Path(sys.executable).parent / "faceage"), "predict", str(files[0]), "--model", str(model_file)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and "years (" in result.stdout
