"""Fit a model by the shared protocol: epochs on the fit slice, selection on the validation
slice, temperature scaling on the validation slice. The centralized baseline calls this;
the federated runs use the same pieces round by round (:mod:`.loop`, :mod:`.protocol`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..models import build_model
from .calibration import fit_temperature
from .loop import Tensors, evaluate, make_augment, make_optimizer, state_of, train_epoch
from .protocol import TrainConfig, class_weights, seed_everything


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    temperature: float = 1.0


def fit(config: TrainConfig, train: Tensors, val: Tensors,
        global_counts: list[int] | None = None,
        progress: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train ``config.model`` for ``config.epochs`` epochs; keep the epoch of lowest
    validation loss (the last epoch when there is no validation slice)."""
    seed_everything(config.seed)
    model = build_model(config.model, tuple(train.x.shape[1:]))
    optimizer = make_optimizer(model, config)
    weights = class_weights(global_counts or train.class_counts()) if config.class_weighted \
        else None
    augment = make_augment(config)
    history: list[dict] = []
    best_loss, best_epoch, best_state = math.inf, 0, state_of(model)
    for epoch in range(config.epochs):
        tr = train_epoch(model, optimizer, train, config, epoch, weights, augment)
        row = {"epoch": epoch + 1, "lr": tr["lr"], "train_loss": tr["loss"],
               "train_accuracy": tr["accuracy"]}
        if len(val):
            ev = evaluate(model, val)
            row.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"])
            if ev["loss"] < best_loss:
                best_loss, best_epoch, best_state = ev["loss"], epoch + 1, state_of(model)
        else:
            best_epoch, best_state = epoch + 1, state_of(model)
        history.append(row)
        if progress:
            progress(epoch + 1, row)
    model.load_state_dict(best_state)
    temperature = fit_temperature(evaluate(model, val)["logits"], val.y) if len(val) else 1.0
    return FitResult(model, history, best_epoch, temperature)
