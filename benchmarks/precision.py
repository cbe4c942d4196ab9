"""Training-step speed of each network of the default model in float32 and under bfloat16 autocast, on this CPU:
what ``train.cpu_bf16: auto`` decides from. One row per CPU class, kept across runs in reports/precision.json, so
runs on several machines (or with torch held to AVX2 kernels, ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``)
fill one table.

Usage: python -m benchmarks.precision [--steps N] [--out reports]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks import results_page
from faceage.model.networks import build_network
from faceage.params import MAIN_MEMBER, Params, load_params
from faceage.runtime import cpu_autocast, cpu_features, make_deterministic, use_cpu_bf16
from faceage.training.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")  # variables that hold torch below what the CPU can do


def step_speed(params: Params, name: str, bf16: bool, steps: int) -> float:
    """Training images per second of network ``name`` (``main`` or a member): forward, loss, backward and the
    optimiser's step on random batches of ``train.batch_size`` faces at the network's input size."""
    network = params if name == MAIN_MEMBER else params.member(name)
    make_deterministic(network.train.seed, network.train.threads)
    size, batch = network.model.input_size, network.train.batch_size
    model = build_network(network.model, (params.data.min_age, params.data.max_age)).to(
        memory_format=torch.channels_last
    )
    model.train()
    optimizer = build_optimizer([{"params": list(model.parameters()), "lr": network.train.lr}], network.train)
    images = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    ages = torch.randint(0, model.age.out_features, (batch,))
    precision = cpu_autocast(bf16)
    started = 0.0
    for step in range(steps + 1):  # the first step warms up and is not timed
        if step == 1:
            started = time.perf_counter()
        with precision:
            loss = torch.nn.functional.cross_entropy(model(images)["age_output"].float(), ages)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def measure(params: Params, steps: int) -> dict:
    """Both precisions for every network, and what the CPU is."""
    features = cpu_features()
    networks = {}
    for name in tqdm([MAIN_MEMBER, *params.members], desc="networks", unit="network", disable=None):
        network = params if name == MAIN_MEMBER else params.member(name)
        float32 = step_speed(params, name, False, steps)
        bfloat16 = step_speed(params, name, True, steps)
        networks[name] = {
            "backbone": network.model.backbone,
            "input_size": network.model.input_size,
            "float32_images_per_second": round(float32, 1),
            "bfloat16_images_per_second": round(bfloat16, 1),
            "bfloat16_over_float32": round(bfloat16 / float32, 2),
        }
    return {
        **features,
        "limits": {name: os.environ[name] for name in LIMITS if name in os.environ},
        "auto_chooses": "bfloat16" if use_cpu_bf16("auto") else "float32",
        "steps": steps,
        "networks": networks,
    }


def class_label(row: dict) -> str:
    """The CPU class a row holds for."""
    limits = ", ".join(f"{k}={v}" for k, v in row["limits"].items())
    native = "native bfloat16" if row["native_bf16"] else "no native bfloat16"
    return f"{row['capability']} kernels, {native}" + (f" (torch held there: {limits})" if limits else "")


def markdown(rows: dict[str, dict]) -> str:
    """One table row per CPU class and network."""
    lines = [
        "Training steps per CPU class (`python -m benchmarks.precision`): images/s in float32 and under bfloat16",
        "autocast, measured in the same run, and what `train.cpu_bf16: auto` chooses there.",
        "",
        "| CPU class | threads | network | float32 img/s | bfloat16 img/s | bfloat16 / float32 | auto chooses |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        for network in row["networks"].values():
            lines.append(
                f"| {label} | {row['threads']} | {network['backbone']} at {network['input_size']} px"
                f" | {network['float32_images_per_second']:.1f} | {network['bfloat16_images_per_second']:.1f}"
                f" | {network['bfloat16_over_float32']:.2f} | {row['auto_chooses']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per network and precision")
    parser.add_argument("--out", type=Path, default=results_page.REPORTS, help="folder of precision.{json,md}")
    args = parser.parse_args(argv)
    row = measure(load_params(REPO / "params.yaml"), args.steps)
    path = args.out / "precision.json"
    rows = json.loads(path.read_text()) if path.is_file() else {}
    rows[class_label(row)] = row
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "precision.md").write_text(markdown(rows))
    results_page.refresh(args.out)
    print(markdown({class_label(row): row}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
