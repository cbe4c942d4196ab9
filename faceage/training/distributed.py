"""Data-parallel training on PyTorch's own engine: processes started by torchrun (or launched here as
torchrun does), gradients averaged by DistributedDataParallel, and the few figures the processes must
agree on summed across them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from faceage.errors import FaceageError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Workers:
    """This process's place among the training processes: ``rank`` of ``size``, ``local_rank`` on its node.
    One process (the default) needs no communication: every method then works on its input alone."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that logs, shows progress and writes checkpoints and outputs."""
        return self.rank == 0

    def device(self) -> torch.device:
        """One GPU per process on CUDA, else the CPU (MPS has no collective backend)."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def share(self, count: int) -> tuple[slice, float]:
        """This process's rows of a batch of ``count`` and the weight of its mean loss, so that the average
        DDP takes of the processes' gradients is the gradient of the whole batch's mean loss. A process left
        without rows (a last batch smaller than ``size``) runs its first row at weight 0, as DDP needs every
        process to take part in each step."""
        start, stop = count * self.rank // self.size, count * (self.rank + 1) // self.size
        if start == stop:
            return slice(0, 1), 0.0
        return slice(start, stop), (stop - start) * self.size / count

    def sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the processes, in float64 (the same result on every process)."""
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the processes: each saw only
        its share of every batch, and validation and checkpoints need one model."""
        if self.size == 1:
            return
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(self.size)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel with more than one process, else ``module`` itself.
        Wrap again whenever the trainable parameters change: DDP averages only those present when built."""
        if self.size == 1:
            return module
        device_ids = [self.local_rank] if torch.cuda.is_available() else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def _collective_device(self) -> torch.device:
        return self.device() if dist.get_backend() == "nccl" else torch.device("cpu")


SINGLE = Workers()


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or a scheduler) started."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


@contextlib.contextmanager
def joined() -> Iterator[Workers]:
    """Join the process group torchrun set up (nccl on CUDA, gloo on the CPU), or stay one process."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield SINGLE
        return
    workers = Workers(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if torch.cuda.is_available():
        torch.cuda.set_device(workers.local_rank)
    dist.init_process_group(
        "nccl" if torch.cuda.is_available() else "gloo",
        store=_attempt_store(),
        rank=workers.rank,
        world_size=workers.size,
    )
    try:
        yield workers
    finally:
        dist.destroy_process_group()


def _attempt_store() -> dist.Store:
    """torchrun's store, with a prefix per restart. Without it, processes restarted by ``--max-restarts`` on
    torch 2.14.1 failed (connection refused) or hung while setting up gloo in 3 of 4 runs here, as if they
    read the addresses of the processes they replace; with it, 10 of 10 runs recovered."""
    store, _, _ = next(dist.rendezvous("env://"))
    return dist.PrefixStore(f"faceage/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def launch(nproc: int, max_restarts: int, script: str) -> None:
    """Run ``script`` as ``torchrun --standalone --nproc-per-node NPROC --max-restarts N script`` would:
    ``nproc`` processes on this machine, all restarted (up to ``max_restarts`` times) when one fails. Each
    process gets an equal share of the CPU threads unless ``OMP_NUM_THREADS`` is set."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    arguments = ["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}", script]
    try:
        run(parse_args(arguments))
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        raise FaceageError(
            f"training process {rank} of {nproc} exited with code {failure.exitcode} "
            f"(restarts allowed: train.max_restarts = {max_restarts}); its error is above"
        ) from None
