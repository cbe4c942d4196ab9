"""Ensembles: networks trained apart on the same data (``members`` in ``params.yaml``), kept as one model
(:class:`~faceage.model.networks.AgeEnsemble`) whose blend with dlib's untouched model is chosen on validation."""

from __future__ import annotations

import logging
from dataclasses import replace

from faceage.model.inference import make_checkpoint, model_from_checkpoint, predict
from faceage.model.networks import AgeEnsemble, count_parameters
from faceage.params import MAIN_MEMBER, Params
from faceage.runtime import select_device
from faceage.training.loop import TrainingSetup, TrainResult, autocast, blend_errors

log = logging.getLogger(__name__)


def member_params(params: Params) -> dict[str, Params]:
    """The params each network trains with: the model's own (:data:`MAIN_MEMBER`), then each member's. With
    members, none is blended on its own: the ensemble is."""
    if not params.members:
        return {MAIN_MEMBER: params}
    main = replace(params, members={}, model=replace(params.model, reference_blend=(0.0,)))
    return {MAIN_MEMBER: main, **{name: params.member(name) for name in params.members}}


def combine(
    results: dict[str, TrainResult], setups: dict[str, TrainingSetup], weights: tuple[float, ...]
) -> TrainResult:
    """The trained members as one :class:`AgeEnsemble`, blended with dlib's untouched model by the weight in
    ``weights`` with the lowest validation MAE (predicted as training validates: without flip TTA); the main
    member's history, and a summary of the ensemble with each member's own figures under ``members``."""
    main, device = setups[MAIN_MEMBER], select_device()
    networks = []
    for name, result in results.items():
        network = model_from_checkpoint(result.checkpoint, name)
        network.load_state_dict(result.checkpoint["state_dict"])
        networks.append(network)
    sizes = [setup.model_params.input_size for setup in setups.values()]
    ensemble = AgeEnsemble(networks, sizes, blend=max(weights)).to(device).eval()
    val_ids, image_size = main.val_ids, main.images.shape[1]
    predicted = {}
    for b in (0.0, 1.0):  # the members' mean age, then the reference's
        ensemble.blend = b
        amp = autocast(device, main.params)
        predicted[b] = predict(ensemble, main.images, val_ids, image_size, main.params.batch_size, device, amp)["age"]
    errors = blend_errors(predicted[0.0], predicted[1.0], main.ages[val_ids], weights)
    ensemble.blend = min(weights, key=errors.get)
    if ensemble.blend == 0:
        ensemble.reference = None
    rounded = {b: round(e, 3) for b, e in errors.items()}
    log.info("ensemble validation MAE blended with dlib's untouched model: %s", rounded)
    first = results[MAIN_MEMBER]
    checkpoint = make_checkpoint(
        ensemble,
        replace(main.model_params, reference_blend=(ensemble.blend,)),
        main.age_range,
        image_size,
        members=[setup.model_params for name, setup in setups.items() if name != MAIN_MEMBER],
        epoch=first.checkpoint["epoch"],
        val_mae=errors[ensemble.blend],
    )
    summary = {
        **first.summary,
        "best_val_mae": round(errors[ensemble.blend], 4),
        "reference_blend": ensemble.blend,
        "parameters": count_parameters(ensemble),
        "seconds": round(sum(result.summary["seconds"] for result in results.values()), 1),
        "members": {name: result.summary for name, result in results.items()},
    }
    return TrainResult(checkpoint, first.history, summary)
