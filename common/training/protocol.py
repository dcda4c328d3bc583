"""The training protocol that centralized, federated and simulated runs share exactly.

* Split: :func:`spinemet.common.dataset.split_patients` (80/20 by patient, stratified, per
  site) decides the test set; :func:`validation_split` takes a validation slice of each
  site's *training* patients the same way (another seed), so a hospital computes both on
  its own and the test set is never used to choose anything.
* Schedule: the learning rate is a function of the *global* epoch (linear warm-up, then
  cosine decay to ``lr * final_lr_fraction``): a federated round that covers local epochs
  ``[r*E, (r+1)*E)`` uses the same rates as the centralized epochs it replaces.
* Loss: cross-entropy weighted by class weights from the *global* class counts
  (``n / (k * n_c)``; in federation the coordinator sums the sites' counts).
* Optimiser: SGD with momentum and weight decay (the paper's eq. 5 is plain gradient
  descent; momentum 0.9 is the usual addition and is part of the recorded config).
* Model selection: the epoch (or round) with the lowest validation loss (unweighted
  cross-entropy) is kept; ties go to the earlier one.
* Seeding: :func:`seed_everything` seeds Python, NumPy and torch and makes torch
  deterministic; batch order and augmentation draw from generators seeded by (seed, epoch).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..dataset import split_patients

# Per-model defaults, chosen on the tuning cohorts (seeds 100-102), never on seed 0.
MODEL_DEFAULTS: dict[str, dict] = {
    "paper": {"epochs": 100, "lr": 0.1, "batch_size": 16, "weight_decay": 1e-4},
    "resnet-gn": {"epochs": 40, "lr": 0.05, "batch_size": 16, "weight_decay": 5e-4},
}


@dataclass(frozen=True)
class TrainConfig:
    model: str = "paper"
    epochs: int = 100
    batch_size: int = 16
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 3
    final_lr_fraction: float = 0.02
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    split_seed: int = 0          # the data split: fixed across training seeds
    seed: int = 0                # initial weights, batch order, augmentation
    augment: bool = True
    class_weighted: bool = True
    augmentation: dict = field(default_factory=dict)   # overrides of Augment's fields

    @classmethod
    def for_model(cls, model: str, **overrides) -> "TrainConfig":
        if model not in MODEL_DEFAULTS:
            raise ValueError(f"unknown model {model!r}: choose one of "
                             f"{', '.join(MODEL_DEFAULTS)}")
        values = {**MODEL_DEFAULTS[model], **{k: v for k, v in overrides.items()
                                               if v is not None}}
        return cls(model=model, **values)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return replace(self, **changes)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of global epoch ``epoch`` (0-based)."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / (config.warmup_epochs + 1)
    span = max(1, config.epochs - config.warmup_epochs)
    t = min(1.0, (epoch - config.warmup_epochs) / span)
    low = config.lr * config.final_lr_fraction
    return low + 0.5 * (config.lr - low) * (1.0 + math.cos(math.pi * t))


def class_weights(counts, num_classes: int = 3) -> torch.Tensor:
    """``n / (k * n_c)`` from global class counts (a class with no example gets weight 0)."""
    counts = np.asarray(counts, float)[:num_classes]
    n = counts.sum()
    w = np.where(counts > 0, n / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def validation_split(rows: list[dict], fraction: float, seed: int) -> dict[str, str]:
    """{patient_id: 'fit' | 'val'} for a site's (or the pool's) training patients."""
    parts = split_patients(rows, test_fraction=fraction, seed=seed + 7919)
    return {p: ("val" if s == "test" else "fit") for p, s in parts.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator for one epoch's batch order (stream 0) or augmentation (stream 1)."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0]))
    return g
