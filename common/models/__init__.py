"""The model zoo, selectable by name. No Flower here: the client, the server and the
centralized baseline all build their models through :func:`build_model`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .paper import PaperCNN
from .resnet_gn import ResNetGN

CLASS_NAMES = ("normal", "mild", "apparent")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Callable[..., nn.Module]
    summary: str


MODELS: dict[str, ModelInfo] = {
    "paper": ModelInfo("paper", PaperCNN,
                       "Wang et al. 2023 LeNet-style CNN: C1 3 maps, sigmoid, max pooling, "
                       "C3 16 maps, FC 84, softmax"),
    "resnet-gn": ModelInfo("resnet-gn", ResNetGN,
                           "residual CNN with GroupNorm (no batch statistics), 3 stages "
                           "24/48/96, global average pooling"),
}


def build_model(name: str, input_shape: tuple[int, int, int] = (5, 180, 52),
                num_classes: int = len(CLASS_NAMES)) -> nn.Module:
    """A freshly initialised model (seed torch beforehand for reproducible weights)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    c, h, w = input_shape
    return MODELS[name].factory(in_channels=c, num_classes=num_classes, input_hw=(h, w))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax over the classes, optionally temperature-scaled (calibration)."""
    return torch.softmax(logits / temperature, dim=-1)
