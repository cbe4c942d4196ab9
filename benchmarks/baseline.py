"""The training loop of the published projects, as a speed reference: a Dataset that decodes each JPEG
with PIL on every epoch, torchvision transforms, a DataLoader, and the same model, loss and optimiser,
in float32 or, to separate the pipeline's other gains from its precision, under the pipeline's autocast."""

from __future__ import annotations

import contextlib
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from faceage.model.batches import IMAGENET_MEAN, IMAGENET_STD
from faceage.model.networks import build_network, set_train_mode
from faceage.params import Params
from faceage.sections import AugmentParams
from faceage.training.losses import UNKNOWN_GENDER, total_loss
from faceage.training.optim import build_optimizer, parameter_groups
from faceage.training.setup import autocast


class JpegFaces(Dataset):
    """Face files decoded with PIL on every access."""

    def __init__(self, files: list[Path], ages: np.ndarray, transform: transforms.Compose):
        self.files, self.ages, self.transform = files, ages, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        with Image.open(BytesIO(self.files[index].read_bytes())) as image:
            return self.transform(image.convert("RGB")), float(self.ages[index])


def training_transform(input_size: int, augment: AugmentParams) -> transforms.Compose:
    """torchvision's versions of the pipeline's augmentations, at the same strengths."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(input_size, scale=(augment.crop_scale, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(augment.hflip),
            transforms.RandomAffine(augment.rotate, translate=(augment.shift, augment.shift)),
            transforms.ColorJitter(augment.brightness, augment.contrast, augment.saturation, augment.hue),
            transforms.RandomGrayscale(augment.grayscale),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def training_throughput(
    files: list[Path],
    ages: np.ndarray,
    params: Params,
    age_range: tuple[int, int],
    batches: int,
    workers: int,
    pipeline_precision: bool = False,
) -> dict:
    """Images per second of ``batches`` fine-tuning steps on the CPU (data loading included) after one warm-up
    step: in float32, or with ``pipeline_precision`` under the autocast the pipeline's training uses."""
    torch.manual_seed(params.train.seed)
    model = build_network(params.model, age_range, (float(ages.mean()), float(ages.std())))
    set_train_mode(model)
    optimizer = build_optimizer(parameter_groups(model, params.train.lr, params.train), params.train)
    dataset = JpegFaces(files, ages, training_transform(params.model.input_size, params.augment))
    loader = DataLoader(dataset, params.train.batch_size, shuffle=True, num_workers=workers, drop_last=True)
    no_gender = torch.full((params.train.batch_size,), float(UNKNOWN_GENDER))
    precision = autocast(torch.device("cpu"), params.train) if pipeline_precision else contextlib.nullcontext()
    seen, started = 0, 0.0
    for step, (images, batch_ages) in enumerate(loader):
        if step == 1:
            seen, started = 0, time.perf_counter()
        with precision:
            outputs = model(images)
            loss = total_loss(model, outputs, batch_ages.float(), no_gender, params.model, params.train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.train.grad_clip)
        optimizer.step()
        seen += len(images)
        if step == batches:
            break
    seconds = time.perf_counter() - started
    return {"images_per_second": round(seen / seconds, 1), "images": seen, "seconds": round(seconds, 1)}
