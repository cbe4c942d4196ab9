"""A model's networks: the one the ``model`` section describes and the ``members`` of ``params.yaml``, trained
apart on the same data and kept as one :class:`~faceage.model.age_model.AgeModel` blended as validation
chooses."""

from __future__ import annotations

from dataclasses import replace

from faceage.model.age_model import AgeModel
from faceage.model.networks import count_parameters
from faceage.params import MAIN_MEMBER, Params
from faceage.training.blend import choose_blend
from faceage.training.loop import TrainResult
from faceage.training.setup import TrainingSetup, autocast


def member_params(params: Params) -> dict[str, Params]:
    """The params each network trains with: the model's own (:data:`MAIN_MEMBER`), then each member's."""
    main = replace(params, members={})
    return {MAIN_MEMBER: main, **{name: params.member(name) for name in params.members}}


def assemble(
    results: dict[str, TrainResult], setups: dict[str, TrainingSetup], weights: tuple[float, ...]
) -> tuple[AgeModel, dict]:
    """The trained networks as one model, blended with dlib's untouched model by the weight in ``weights`` with
    the lowest validation MAE, and the summary of its training: the main network's, with the model's validation
    MAE, blend, size and time, and with members each network's own under ``members``."""
    main = setups[MAIN_MEMBER]
    networks = [result.network for result in results.values()]
    sizes = [setup.model_params.input_size for setup in setups.values()]
    device = networks[0].bin_ages.device
    model = AgeModel(networks, sizes, max(weights), main.age_range, main.images.shape[1]).to(device).eval()
    amp = autocast(device, main.params)
    errors = choose_blend(model, main.images, main.val_ids, main.ages, weights, main.params.batch_size, device, amp)
    first = results[MAIN_MEMBER].summary
    summary = {
        **first,
        "best_val_mae": round(errors[model.blend], 4),  # the kept model's: blended as chosen
        "epoch_val_mae": first["best_val_mae"],  # the main network's own at its kept epoch
        "reference_blend": model.blend,
        "parameters": count_parameters(model),
        "seconds": round(sum(result.summary["seconds"] for result in results.values()), 1),
        **({"members": {name: result.summary for name, result in results.items()}} if len(results) > 1 else {}),
    }
    return model, summary
