"""Coordinator-side evaluation on a labelled held-out set it owns (``--test-data``).

The studies are preprocessed by the same pipeline into a cache before the run
(``flower-server --test-data``); every labelled study in that cache is scored, with the
full per-patient metrics (exact AUC) since the data never left the coordinator.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from ..common.dataset import SpineDataset
from ..common.metrics import classification_metrics
from ..common.models import build_model, probabilities
from ..common.training.loop import Tensors, load_tensors, predict_logits


@lru_cache(maxsize=2)
def load_held_out(cache: str, pipeline_hash: str, split: str = "all", split_seed: int = 0,
                  test_fraction: float = 0.2) -> Tensors:
    """Every labelled study of the cache (``all``), or the split's test patients (``test``:
    the simulation's common test split, the same patients the centralized baseline tests
    on)."""
    return load_tensors(SpineDataset(Path(cache), split=split, seed=split_seed,
                                     test_fraction=test_fraction, pipeline_hash=pipeline_hash))


def evaluate_on(data: Tensors, model_name: str, input_shape, weights: dict[str, torch.Tensor],
                temperature: float = 1.0, bootstrap: int = 0) -> dict:
    model = build_model(model_name, tuple(input_shape))
    model.load_state_dict(weights)
    logits = predict_logits(model, data.x)
    return classification_metrics(data.y.numpy(), probabilities(logits, temperature).numpy(),
                                   bootstrap=bootstrap)
