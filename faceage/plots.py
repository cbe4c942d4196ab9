"""Matplotlib figures that the pipeline writes as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
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


def interval_buckets(intervals_by_split: dict[str, dict], path: str | Path) -> None:
    """Per age bucket, one colour per split: the share of faces whose interval holds their age against the
    nominal level (left), and the mean interval width beside that of one width for all (right, hatched)."""
    labels = list(next(iter(intervals_by_split.values()))["buckets"])
    level = next(iter(intervals_by_split.values()))["level"]
    figure, (cover, wide) = plt.subplots(1, 2, figsize=(13, 4))
    width = 0.8 / len(intervals_by_split)
    for k, (name, intervals) in enumerate(intervals_by_split.items()):
        positions = [i + (k - (len(intervals_by_split) - 1) / 2) * width for i in range(len(labels))]
        rows = [intervals["buckets"][label] for label in labels]
        fixed = [intervals["one_width"]["buckets"][label] for label in labels]
        cover.bar(positions, [row["coverage"] or 0.0 for row in rows], width, label=name)
        bars = wide.bar(positions, [row["width"] or 0.0 for row in rows], width, label=name)
        colour = bars.patches[0].get_facecolor()
        wide.scatter(positions, [row["width"] or 0.0 for row in fixed], marker="_", s=200, color=colour, zorder=3)
    cover.axhline(level, color="black", linestyle="--", linewidth=1, label=f"nominal {level:.0%}")
    cover.set(ylim=(0, 1.05), ylabel="coverage", title="Share of faces whose interval holds their age")
    wide.set(ylabel="mean width (years)", title="Interval width (dash: one width for all)")
    for axis in (cover, wide):
        axis.set_xticks(range(len(labels)), labels)
        axis.set_xlabel("true age bucket (years)")
        axis.legend(fontsize=8)
    save(figure, path)


def learning_curves(history: list[dict], best_epoch: int, path: str | Path) -> None:
    """Training loss and train/validation MAE per epoch, with where fine-tuning starts and the kept epoch."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, mae_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Training loss")
    for key in ("train_mae", "val_mae"):
        mae_axis.plot(epochs, [row[key] for row in history], marker="o", label=key.replace("_mae", ""))
    mae_axis.set(xlabel="epoch", ylabel="MAE (years)", title="MAE")
    finetune = [row["epoch"] for row in history if row["phase"] == "finetune"]
    for axis in (loss_axis, mae_axis):
        if finetune and finetune[0] > epochs[0]:
            axis.axvline(finetune[0] - 0.5, color="gray", linestyle=":", label="fine-tuning starts")
        axis.axvline(best_epoch, color="green", linestyle="--", label="best epoch")
    mae_axis.legend()
    save(figure, path)


def predicted_vs_true(
    true: np.ndarray, predicted: np.ndarray, age_range: tuple[int, int], title: str, path: str | Path
) -> None:
    """Scatter of predicted against true age, with the identity line, on axes spanning ``age_range`` so
    that plots of different runs share one scale."""
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(true, predicted, s=6, alpha=0.4)
    low, high = age_range[0] - 1, age_range[1] + 1
    axis.plot([low, high], [low, high], color="black", linewidth=1, label="perfect prediction")
    axis.set(xlim=(low, high), ylim=(low, high), xlabel="true age (years)", ylabel="predicted age (years)", title=title)
    axis.legend(loc="upper left")
    save(figure, path)


def error_histogram(errors: np.ndarray, title: str, path: str | Path) -> None:
    """Histogram of signed errors (predicted minus true)."""
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(errors, bins=np.arange(np.floor(errors.min()) - 0.5, np.ceil(errors.max()) + 1.5, 1.0))
    axis.axvline(0, color="black", linewidth=1)
    axis.set(xlabel="predicted - true age (years)", ylabel="images", title=title)
    save(figure, path)


def confusion(table: dict[str, dict[str, int]], title: str, path: str | Path) -> None:
    """Confusion matrix of age groups, counts in the cells, rows normalised for the colours."""
    labels = list(table)
    counts = np.array([[table[t][p] for p in labels] for t in labels])
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(5, 4.5))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        axis.text(j, i, str(count), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set(xlabel="predicted age group", ylabel="true age group", title=title)
    save(figure, path)


def face_gallery(
    faces: np.ndarray, captions: list[str], path: str | Path, heat_maps: np.ndarray | None = None, columns: int = 8
) -> None:
    """A grid of face images with captions, optionally overlaid with heat maps in ``[0, 1]``."""
    rows = max(1, -(-len(faces) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(faces):
            axis.imshow(faces[index])
            if heat_maps is not None:
                axis.imshow(heat_maps[index], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axis.set_title(captions[index], fontsize=8)
    save(figure, path)


def mae_by_backbone(board: list[dict], path: str | Path) -> None:
    """Test MAE of each backbone's best run, with its confidence interval as whiskers."""
    names = [entry["backbone"] for entry in board]
    values = np.array([entry["test_mae"] for entry in board])
    lows = np.array([entry["test_mae_ci"][0] or value for entry, value in zip(board, values, strict=True)])
    highs = np.array([entry["test_mae_ci"][1] or value for entry, value in zip(board, values, strict=True)])
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(names)), 4))
    axis.bar(names, values, yerr=[values - lows, highs - values], capsize=6)
    axis.set(ylabel="test MAE (years)", title="Test MAE of each backbone's best run (by validation MAE)")
    save(figure, path)


def bucket_mae_by_backbone(board: list[dict], path: str | Path) -> None:
    """Test MAE per age bucket, one line per backbone."""
    figure, axis = plt.subplots(figsize=(8, 4))
    for entry in board:
        labels = list(entry["test_bucket_mae"])
        values = [np.nan if v is None else v for v in entry["test_bucket_mae"].values()]
        axis.plot(labels, values, marker="o", label=entry["backbone"])
    axis.set(xlabel="true age bucket (years)", ylabel="test MAE (years)", title="Test MAE per age bucket")
    axis.legend()
    save(figure, path)
