"""Device choice, precision, threads and seeds."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import random

import numpy as np
import torch


def select_device() -> torch.device:
    """The fastest available device: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def make_deterministic(seed: int, threads: int = 0) -> None:
    """Seed every generator and ask torch for deterministic kernels; ``threads`` > 0 sets CPU threads."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if threads > 0:
        torch.set_num_threads(threads)


def worker_pool(workers: int) -> multiprocessing.pool.Pool:
    """``workers`` processes with one torch thread each (the processes are the parallelism; face detection by
    MTCNN runs on torch)."""
    return multiprocessing.Pool(workers, initializer=torch.set_num_threads, initargs=(1,))


def native_cpu_bf16() -> bool:
    """Whether torch computes bfloat16 in hardware here: the CPU has AVX-512 BF16 or AMX, and neither torch's
    kernels (``ATEN_CPU_CAPABILITY``) nor oneDNN's (``ONEDNN_MAX_CPU_ISA``) are held below AVX-512."""
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return (
        hardware
        and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        and onednn.startswith(("ALL", "AVX512", "AMX"))
    )


def cpu_features() -> dict:
    """What decides speed on this CPU: torch's kernel level (e.g. AVX2, AVX512), native bfloat16, threads."""
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_cpu_bf16(),
        "threads": torch.get_num_threads(),
    }


def use_cpu_bf16(setting: str | bool) -> bool:
    """Whether to run under bfloat16 autocast on the CPU. ``auto`` takes it only where the CPU computes bfloat16
    natively: elsewhere autocast emulates it, and a training step is several times slower than in float32."""
    return native_cpu_bf16() if setting == "auto" else setting


def cpu_autocast(bf16: bool = True) -> torch.autocast:
    """bfloat16 autocast on the CPU, as training and prediction both use it; with ``bf16`` false, a context in
    which autocast is off."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def cpu_precision_reason(setting: str | bool) -> str:
    """The CPU precision chosen for ``setting``, and why, in a few words for logs and reports."""
    precision = "bfloat16" if use_cpu_bf16(setting) else "float32"
    if setting != "auto":
        return f"{precision}: train.cpu_bf16 is {str(setting).lower()}"
    native = "computes bfloat16 natively" if native_cpu_bf16() else "has no native bfloat16 (it would be emulated)"
    return f"{precision}: train.cpu_bf16 is auto and this CPU ({torch.backends.cpu.get_cpu_capability()}) {native}"
