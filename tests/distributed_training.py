"""Started by torchrun from test_distributed.py: one of the processes that train the tiny setup of
:func:`tiny_setup`; each saves the weights, history and summary it ends with as ``rank<N>.pt``.

Usage: distributed_training.py OUT {exact,one_step,default,sync_bn} [CRASH_AFTER_EPOCH]. ``exact`` turns off what
makes processes differ from one process (augmentation, dropout, batch statistics, bfloat16); ``one_step`` is
``exact`` for a single plain SGD step on one batch of all 40 training images; ``sync_bn``
is the default with BatchNorm statistics over the whole batch (CUDA only); with a crash epoch,
process 1 exits after that epoch in the first attempt, so torchrun must restart both.
"""

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run by torchrun: the repository, for conftest's imports
from conftest import settings, synthetic_faces

from faceage.sections import AugmentParams, ModelParams, TrainParams
from faceage.training.distributed import joined
from faceage.training.loop import train_network
from faceage.training.resume import ResumeFile
from faceage.training.setup import TrainingSetup

NO_AUGMENTATION = settings(
    AugmentParams,
    hflip=0,
    crop_scale=1,
    shift=0,
    rotate=0,
    brightness=0,
    contrast=0,
    saturation=0,
    hue=0,
    grayscale=0,
    erasing=0,
)


def tiny_setup(exact: bool, sync_bn: bool = False, one_step: bool = False) -> TrainingSetup:
    """60 16-pixel images whose brightness follows the age; 40 to train on (batches of 16, the last of 8)."""
    images, ages, _, split = synthetic_faces(60, 16, seed=0, train=40, val=10)
    model = settings(
        ModelParams, backbone="resnet18", pretrained=False, input_size=32, hidden=16, dropout=0.0 if exact else 0.2
    )
    params = settings(
        TrainParams,
        head_epochs=1,
        epochs=3,
        batch_size=16,
        seed=5,
        freeze_bn=exact,
        cpu_bf16=not exact,
        sync_bn=sync_bn,
    )
    if one_step:
        params = replace(params, head_epochs=0, epochs=1, batch_size=40, optimizer="sgd", scheduler="none")
    return TrainingSetup(
        images,
        ages,
        np.zeros(60),
        split,
        model,
        params,
        NO_AUGMENTATION if exact else settings(AugmentParams),
        (1, 100),
    )


def main(out: Path, mode: str, crash_after: int | None) -> None:
    with joined() as workers:
        setup = tiny_setup(exact=mode in ("exact", "one_step"), sync_bn=mode == "sync_bn", one_step=mode == "one_step")

        def crash(row: dict) -> None:
            first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
            if workers.rank == 1 and row["epoch"] == crash_after and first_attempt:
                (out / "crashed").touch()
                os._exit(3)

        resume = ResumeFile(out / "state.pt", setup.fingerprint())
        result = train_network(setup, resume=resume, on_epoch_end=crash, workers=workers)
        saved = {"state_dict": result.network.state_dict(), "history": result.history, "summary": result.summary}
        torch.save(saved, out / f"rank{workers.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
