"""Coordinator-side evaluation on a labelled held-out set it owns (``--test-data``).

The studies are preprocessed by the same pipeline into a cache before the run
(``flower-server --test-data``); every labelled study in that cache is scored, with the
full per-patient metrics (exact AUC) since the data never left the coordinator.

:class:`HeldOutScorer` scores each round's starting weights in a background thread while
the sites train on them: the coordinator only waits for replies then, so the score costs
the round no time where a core is free (a deployment's coordinator host; in a simulation,
the last of the hospitals' waves on Ray's actors).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
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


class HeldOutScorer:
    """Accuracy of weights on the held-out set, computed in one background thread.

    The evaluation model is built once, outside the run's random stream (``fork_rng``), so
    scoring does not move the seeded state of the run; the same metric function as
    :func:`evaluate_on` gives the same number."""

    def __init__(self, data: Tensors, model_name: str, input_shape):
        self.data = data
        with torch.random.fork_rng():
            self.model = build_model(model_name, tuple(input_shape))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="held-out-score")

    def submit(self, weights: dict[str, torch.Tensor]) -> Future:
        """Start scoring ``weights`` (not modified by the caller until the result is read)."""
        return self._pool.submit(self._accuracy, weights)

    def _accuracy(self, weights: dict[str, torch.Tensor]) -> float:
        self.model.load_state_dict(weights)
        logits = predict_logits(self.model, self.data.x)
        return float(classification_metrics(self.data.y.numpy(),
                                            probabilities(logits).numpy(),
                                            bootstrap=0)["accuracy"])

    def close(self) -> None:
        self._pool.shutdown(wait=True)
