"""The training and evaluation loops every party runs (centralized, Flower client, server).

Data are small (a study is a 5 x 180 x 52 float32 tensor, 187 kB; 941 studies 176 MB), so a
party loads its studies into one tensor once (:func:`load_tensors`) and batches are index
selections of it: no DataLoader workers, nothing to decode per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import Augment
from .protocol import TrainConfig, epoch_generator, lr_at


@dataclass
class Tensors:
    """Images (N, C, H, W), labels (N,) and who they are."""

    x: torch.Tensor
    y: torch.Tensor
    patient_ids: list[str]
    sites: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask) -> "Tensors":
        idx = np.flatnonzero(np.asarray(mask))
        return Tensors(self.x[idx], self.y[idx], [self.patient_ids[i] for i in idx],
                       [self.sites[i] for i in idx])

    def class_counts(self, num_classes: int = 3) -> list[int]:
        return np.bincount(self.y.numpy(), minlength=num_classes).tolist()


def load_tensors(dataset, progress: Callable[[int, int], None] | None = None) -> Tensors:
    """Every study of a :class:`~spinemet.common.dataset.SpineDataset` in memory."""
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty: no labelled, preprocessed study with T1, T2 "
                         "and STIR (run `spinemet validate` on the data folder)")
    first, _ = dataset[0]
    x = torch.empty((n, *first.shape), dtype=torch.float32)
    y = torch.empty(n, dtype=torch.long)
    for i in range(n):
        x[i], y[i] = dataset[i]
        if progress:
            progress(i + 1, n)
    return Tensors(x, y, list(dataset.patient_ids),
                   [e["site"] for e in dataset.entries])


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: Tensors,
                config: TrainConfig, epoch: int, weights: torch.Tensor | None = None,
                augment: Augment | None = None,
                penalty: Callable[[nn.Module], torch.Tensor] | None = None) -> dict:
    """One epoch of SGD at the schedule's rate for global epoch ``epoch``.

    ``penalty(model)`` is added to each batch's loss (FedProx's proximal term); the reported
    loss is the data term alone.

    Returns {'loss': mean weighted training loss, 'accuracy': on the augmented batches,
    'lr': rate used, 'n': examples}."""
    model.train()
    lr = lr_at(config, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    order = torch.randperm(len(data), generator=epoch_generator(config.seed, epoch, 0))
    aug_gen = epoch_generator(config.seed, epoch, 1)
    total, seen, correct = 0.0, 0, 0
    for start in range(0, len(order), config.batch_size):
        idx = order[start:start + config.batch_size]
        xb, yb = data.x[idx], data.y[idx]
        if augment is not None:
            xb = augment(xb, aug_gen)
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, weight=weights)
        (loss + penalty(model) if penalty is not None else loss).backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(idx)
    return {"loss": total / max(seen, 1), "accuracy": correct / max(seen, 1), "lr": lr,
            "n": seen}


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) \
        if len(x) else torch.empty((0, 3))


def evaluate(model: nn.Module, data: Tensors) -> dict:
    """Unweighted cross-entropy, accuracy and the logits on ``data``."""
    logits = predict_logits(model, data.x)
    loss = float(F.cross_entropy(logits, data.y)) if len(data) else float("nan")
    acc = float((logits.argmax(1) == data.y).float().mean()) if len(data) else float("nan")
    return {"loss": loss, "accuracy": acc, "logits": logits}


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def make_augment(config: TrainConfig) -> Augment | None:
    return Augment(**config.augmentation) if config.augment else None


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

