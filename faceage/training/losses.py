"""Training losses of the age head and the optional auxiliary heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from faceage.model.networks import AgeNet
from faceage.sections import ModelParams, TrainParams

REGRESSION_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss}
UNKNOWN_GENDER = -1


def age_groups(ages: torch.Tensor, edges: tuple[int, ...]) -> torch.Tensor:
    """Age-group index of each age: 0 below ``edges[0]``, ``i + 1`` from ``edges[i]``."""
    return torch.bucketize(ages, torch.tensor(edges, dtype=ages.dtype, device=ages.device), right=True)


def gaussian_label_distribution(ages: torch.Tensor, bin_ages: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-sample target distribution over the age bins: a Gaussian of width ``sigma`` years, normalised."""
    weights = torch.exp(-0.5 * ((bin_ages[None, :] - ages[:, None]) / sigma) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def age_loss(model: AgeNet, output: torch.Tensor, ages: torch.Tensor, params: TrainParams) -> torch.Tensor:
    """Loss of the age output against true ages in years."""
    output = output.float()
    if model.classification:
        if params.label_sigma > 0:
            target = gaussian_label_distribution(ages, model.bin_ages, params.label_sigma)
        else:
            target = (ages - model.bin_ages[0]).round().long().clamp(0, len(model.bin_ages) - 1)
        return F.cross_entropy(output, target, label_smoothing=params.label_smoothing)
    return REGRESSION_LOSSES[params.loss](output.squeeze(1), (ages - model.age_mean) / model.age_std)


def total_loss(
    model: AgeNet,
    outputs: dict[str, torch.Tensor],
    ages: torch.Tensor,
    genders: torch.Tensor,
    model_params: ModelParams,
    params: TrainParams,
) -> torch.Tensor:
    """Age loss plus the weighted auxiliary losses; genders equal to ``UNKNOWN_GENDER`` are left out. With a
    ``teacher`` output (a teacher model's age distribution), ``distill_weight`` times the KL divergence of the
    age distribution from it."""
    loss = age_loss(model, outputs["age_output"], ages, params)
    if "teacher" in outputs:
        log_p = outputs["age_output"].float().log_softmax(dim=1)
        loss = loss + params.distill_weight * F.kl_div(log_p, outputs["teacher"], reduction="batchmean")
    if "gender" in outputs:
        known = (genders != UNKNOWN_GENDER).float()  # a weight, not a selection: the head takes part in every step
        gender_loss = F.binary_cross_entropy_with_logits(
            outputs["gender"].float(), genders.clamp(min=0).float(), weight=known, reduction="sum"
        )
        loss = loss + model_params.gender_weight * gender_loss / known.sum().clamp(min=1)
    if "age_group" in outputs:
        groups = age_groups(ages, model_params.age_group_edges)
        loss = loss + model_params.age_group_weight * F.cross_entropy(outputs["age_group"].float(), groups)
    return loss
