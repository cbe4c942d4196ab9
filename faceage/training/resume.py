"""The training state saved after every epoch, so an interrupted training resumes where it stopped and ends
with the same weights as an uninterrupted one."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from faceage.model.networks import AgeNet
from faceage.training.stepper import Stepper

log = logging.getLogger(__name__)


class ResumeFile:
    """The training state saved after every epoch, resumed only by the run with the same fingerprint.

    The state also carries ``run_id``, the MLflow run the training logs to, so a resumed training keeps
    logging to the run it started. A state of another fingerprint is ignored; its run id is kept in
    ``abandoned_run_id`` so the caller can close that run.
    """

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.run_id: str | None = None
        self.abandoned_run_id: str | None = None
        self.saved = self._read()

    def _read(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a state cut short by a crash is not worth a failed run
            log.warning("ignoring %s: it cannot be read (%s)", self.path, error)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.info("ignoring %s: it belongs to other parameters or data", self.path)
            self.abandoned_run_id = state.get("run_id")
            return None
        self.run_id = state.get("run_id")
        return state

    @property
    def history(self) -> list[dict]:
        """The epochs the saved state has been through."""
        return self.saved["history"] if self.saved else []

    def save(self, state: dict) -> None:
        """Write atomically, so an interruption while saving leaves the previous state intact."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        torch.save({**state, "fingerprint": self.fingerprint, "run_id": self.run_id}, temporary)
        temporary.replace(self.path)

    def remove(self) -> None:
        """Forget the state once the training's outputs are written."""
        self.path.unlink(missing_ok=True)
        self.saved = None


@dataclass
class Progress:
    """Where training stands: the epochs run, the best so far, epochs since it last improved, and the
    phase and epoch to run next."""

    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    stale: int = 0
    phase: int = 0
    epoch: int = 0


def weight_average(model: AgeNet, decay: float) -> AveragedModel | None:
    """Exponential moving average of ``model``'s weights and buffers, updated after every step; None for 0."""
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class TrainingState:
    """What changes as training goes: the model and its weight average, the random generators and the
    progress. A :meth:`state_dict` taken after an epoch and loaded into a fresh state goes on as if
    training had not stopped."""

    def __init__(self, model: AgeNet, ema_decay: float, seed: int):
        self.model = model
        self.average = weight_average(model, ema_decay)
        self.shuffle_rng = np.random.default_rng(seed)
        self.augment_rng = torch.Generator().manual_seed(seed)
        self.progress = Progress()
        self.stepper_state: dict | None = None  # the optimiser state of a phase resumed part-way

    @property
    def validated(self) -> AgeNet:
        """The weights that are validated and kept: the average's when there is one."""
        return self.average.module if self.average is not None else self.model

    def record(self, row: dict, patience: int) -> bool:
        """Add an epoch's ``row`` to the history and keep the weights if they are the best so far; whether
        ``patience`` epochs have passed without improvement."""
        progress = self.progress
        progress.history.append(row)
        if progress.best is None or row["val_mae"] < progress.best["val_mae"]:
            weights = _cpu_copy(self.validated.state_dict())
            progress.best = {"epoch": row["epoch"], "val_mae": row["val_mae"], "model": weights}
            progress.stale = 0
        else:
            progress.stale += 1
        return patience > 0 and progress.stale >= patience

    def state_dict(self, stepper: Stepper) -> dict:
        return {
            **asdict(self.progress),
            "model": _cpu_copy(self.model.state_dict()),
            "average": self.average.state_dict() if self.average is not None else None,
            "stepper": stepper.state_dict(),
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
            "augment_rng": self.augment_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self.augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.progress = Progress(**{name: state[name] for name in ("history", "best", "stale", "phase", "epoch")})
        self.stepper_state = state["stepper"] if self.progress.epoch > 0 else None


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}
