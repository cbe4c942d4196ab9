"""What a training reports: the headline figures DVC tracks and the table of epochs."""

from __future__ import annotations

import pandas as pd


def headline_metrics(summary: dict) -> dict:
    """The training figures DVC tracks; the rest of ``summary`` is details. Few and short, so that
    ``dvc exp show`` fits the test figures beside them on one screen. The speed is fine-tuning's, or the
    head stage's when there is no fine-tuning; with a student, ``best_val_mae`` is the kept model's and the
    student's own is beside it."""
    phase = "finetune" if "finetune_images_per_second" in summary else "head"
    return {
        "best_val_mae": summary["best_val_mae"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": summary["seconds"],
        "train_images_per_second": summary.get(f"{phase}_images_per_second", 0.0),
        **({"student_val_mae": summary["student"]["best_val_mae"]} if "student" in summary else {}),
    }


def history_table(history: list[dict], best_epoch: int) -> pd.DataFrame:
    """One row per epoch, with a ``marker`` naming the epoch where fine-tuning starts and the kept one."""
    table = pd.DataFrame(history)
    starts = (table["phase"] == "finetune") & (table["phase"].shift() == "head")
    best = table["epoch"] == best_epoch
    names = (("fine-tuning starts", starts), ("best epoch", best))
    table["marker"] = [", ".join(name for name, rows in names if rows[row]) for row in table.index]
    return table
