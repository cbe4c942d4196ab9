"""Training in several processes under torchrun (gloo on the CPU), against one process."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_training import tiny_setup

from faceage.errors import FaceageError
from faceage.training.distributed import Workers
from faceage.training.loop import train_network

SCRIPT = Path(__file__).with_name("distributed_training.py")


def torchrun(out: Path, mode: str, *extra: str, max_restarts: int = 0) -> list[dict]:
    """Train the tiny setup in two processes; what each process saved."""
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += [f"--max-restarts={max_restarts}", str(SCRIPT), str(out), mode, *extra]
    finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def assert_identical(first: dict, second: dict) -> None:
    assert first["history"] == second["history"]
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [
        (16, 2, [(slice(0, 8), 1.0), (slice(8, 16), 1.0)]),
        (7, 2, [(slice(0, 3), 6 / 7), (slice(3, 7), 8 / 7)]),
        (2, 3, [(slice(0, 1), 0.0), (slice(0, 1), 1.5), (slice(1, 2), 1.5)]),
    ],
)
def test_each_process_takes_its_share_of_a_batch_weighted_as_the_whole_batch_mean(count, size, expected):
    shares = [Workers(rank, size).share(count) for rank in range(size)]
    assert [(rows, pytest.approx(weight)) for rows, weight in shares] == expected
    # Weighted per-process means average (as DDP averages gradients) to the mean over the whole batch.
    values = np.arange(count, dtype=float) ** 2
    means = [values[rows].mean() * weight for rows, weight in shares]
    assert sum(means) / size == pytest.approx(values.mean())


@pytest.mark.slow  # torchrun
def test_one_step_in_two_processes_is_one_process_step_to_float32_rounding(tmp_path):
    """The two processes' half-batch gradients, averaged by DDP, are the whole batch's: after one plain SGD step
    the weights differ from one process's only by the order float32 sums in (about 1e-7 of each value)."""
    ranks = torchrun(tmp_path / "run", "one_step")
    assert_identical(*ranks)
    one = train_network(tiny_setup(exact=True, one_step=True), torch.device("cpu"))
    assert ranks[0]["summary"]["processes"] == 2 and one.summary["processes"] == 1
    for key, value in one.network.state_dict().items():
        torch.testing.assert_close(ranks[0]["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow  # torchrun
def test_two_processes_train_as_one_on_the_same_batches(tmp_path):
    """Over a whole run, Adam divides each gradient by its own running size, so rounding differences of tiny
    gradients grow (up to 0.5 % of a weight after 4 epochs on an AVX2 CPU): the run is compared by what it
    predicts. The validation MAE agreed to 8e-4 years there; 0.01 allows for any CPU's summation order."""
    ranks = torchrun(tmp_path / "run", "exact")
    assert_identical(*ranks)
    one = train_network(tiny_setup(exact=True), torch.device("cpu"))
    assert [row["epoch"] for row in ranks[0]["history"]] == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [row["val_mae"] for row in ranks[0]["history"]], [row["val_mae"] for row in one.history], atol=0.01
    )


@pytest.mark.slow  # torchrun
def test_a_crashed_process_is_restarted_and_training_resumes_to_the_same_weights(tmp_path):
    """Defaults (augmentation, dropout, BatchNorm in training mode, bfloat16): the processes still end with
    identical weights, and a run in which process 1 dies after epoch 2 ends as an uninterrupted one."""
    uninterrupted = torchrun(tmp_path / "uninterrupted", "default")
    assert_identical(*uninterrupted)
    crashed = torchrun(tmp_path / "crashed", "default", "2", max_restarts=1)
    assert (tmp_path / "crashed" / "crashed").exists()
    assert_identical(crashed[0], uninterrupted[0])
    assert_identical(crashed[1], uninterrupted[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_sync_bn_without_cuda_stops_with_one_line():
    with pytest.raises(FaceageError, match=r"train\.sync_bn needs CUDA"):
        train_network(tiny_setup(exact=False, sync_bn=True), workers=Workers(0, 2))


@pytest.mark.cuda
@pytest.mark.slow  # torchrun
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (nccl, one process each)")
@pytest.mark.parametrize("mode", ["default", "sync_bn"])
def test_two_gpu_processes_end_identical(tmp_path, mode):
    assert_identical(*torchrun(tmp_path / "run", mode))
