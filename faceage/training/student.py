"""The student: one network of the model section's kind taught by the whole model (its networks averaged and
blended), kept in the model's place when its validation MAE is within ``student.tolerance`` of the model's."""

from __future__ import annotations

from dataclasses import replace

from faceage.model.age_model import AgeModel
from faceage.params import Params
from faceage.training.loop import TrainResult
from faceage.training.setup import TrainingSetup

TEACHER = "teacher"  # the name the model that taught the student is logged under when the student replaces it


def student_setup(main: TrainingSetup, params: Params, teacher: AgeModel) -> TrainingSetup:
    """The main network's training setup, taught by ``teacher`` with ``student.distill_weight``."""
    return replace(main, params=params.student_params().train, teacher=teacher)


def student_model(result: TrainResult, setup: TrainingSetup) -> AgeModel:
    """The trained student as a model of its own, unblended: it learnt the blended ages."""
    return AgeModel.of(result.network, setup.model_params.input_size).eval()


def student_summary(result: TrainResult, model_val_mae: float, tolerance: float) -> dict:
    """The student's training summary, its validation MAE beside the model's, and whether it is kept: within
    ``tolerance`` years of the model's (both predicted as training validates: one view, uncorrected)."""
    student_val_mae = result.summary["best_val_mae"]
    return {
        **result.summary,
        "model_val_mae": model_val_mae,
        "val_mae_behind": round(student_val_mae - model_val_mae, 4),
        "tolerance": tolerance,
        "kept": student_val_mae <= model_val_mae + tolerance,
    }
