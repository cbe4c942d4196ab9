"""Matplotlib figures that the pipeline writes as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def save(figure: plt.Figure, path: str | Path) -> None:
    """Write ``figure`` as a PNG and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def age_histogram(ages_by_split: dict[str, pd.Series], path: str | Path) -> None:
    """Overlaid age histograms, one per split, as shares of that split."""
    figure, axis = plt.subplots(figsize=(7, 4))
    top = max((int(a.max()) for a in ages_by_split.values() if len(a)), default=1)
    bins = range(0, top + 6, 5)
    for name, ages in ages_by_split.items():
        axis.hist(ages, bins=bins, density=True, histtype="step", linewidth=1.5, label=f"{name} (n={len(ages)})")
    axis.set(xlabel="age (years)", ylabel="share of split per year", title="Age distribution per split")
    axis.legend()
    save(figure, path)


def bucket_mae(buckets_by_split: dict[str, dict], path: str | Path) -> None:
    """Grouped bars of MAE per age bucket, one colour per split, with each bucket's sample count."""
    labels = list(next(iter(buckets_by_split.values())))
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(buckets_by_split)
    for k, (name, buckets) in enumerate(buckets_by_split.items()):
        values = [buckets[label]["mae"] or 0.0 for label in labels]
        positions = [i + (k - (len(buckets_by_split) - 1) / 2) * width for i in range(len(labels))]
        bars = axis.bar(positions, values, width, label=name)
        axis.bar_label(bars, labels=[f"n={buckets[label]['count']}" for label in labels], fontsize=7)
    axis.set_xticks(range(len(labels)), labels)
    axis.set(xlabel="true age bucket (years)", ylabel="MAE (years)", title="Mean absolute error per age bucket")
    axis.legend()
    save(figure, path)


def learning_curves(history: list[dict], path: str | Path) -> None:
    """Training loss and train/validation MAE per epoch."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, mae_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Training loss")
    for key in ("train_mae", "val_mae"):
        mae_axis.plot(epochs, [row[key] for row in history], marker="o", label=key.replace("_mae", ""))
    mae_axis.set(xlabel="epoch", ylabel="MAE (years)", title="MAE")
    mae_axis.legend()
    save(figure, path)
