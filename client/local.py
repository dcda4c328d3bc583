"""A hospital's work in one round, without Flower: score the weights it got, train on.

:func:`train_round` is the ``train`` message's work and :func:`evaluate_weights` the
``evaluate`` message's; :mod:`.app` wraps them in Flower messages. Both take plain state
dicts and return plain numbers, so tests drive them directly.
"""

from __future__ import annotations

import logging
import time

import torch

from ..common.federation import epochs_of_round, site_seed
from ..common.models import build_model
from ..common.pooled_metrics import evaluation_summary
from ..common.training.loop import evaluate, make_augment, make_optimizer, train_epoch
from ..common.training.protocol import TrainConfig, class_weights, seed_everything
from .site_data import SiteData

log = logging.getLogger(__name__)


def _model(config: TrainConfig, data: SiteData, state: dict[str, torch.Tensor]):
    model = build_model(config.model, data.input_shape)
    model.load_state_dict(state)
    return model


def score(model, data: SiteData, temperatures: list[float] | None = None,
          temperature: float = 1.0) -> dict:
    """Validation and test summaries of ``model`` (counts and sums only); the test part's
    probabilities at ``temperature``."""
    out: dict = {}
    for prefix, part, temps, t in (("val-", data.val, temperatures, 1.0),
                                   ("test-", data.test, None, temperature)):
        logits = evaluate(model, part)["logits"]
        out.update(evaluation_summary(logits, part.y, prefix, temps, t))
    return out


def proximal_term(model, anchor: dict[str, torch.Tensor], mu: float):
    """FedProx: ``mu / 2 * ||w - w_global||^2`` over the trainable parameters."""
    params = [(p, anchor[name]) for name, p in model.named_parameters()]

    def penalty(_model) -> torch.Tensor:
        return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in params)
    return penalty


class MomentumMismatch(ValueError):
    """The carried buffers are not one per trainable parameter of the model."""


def load_momentum(model, optimizer: torch.optim.Optimizer,
                  momentum: dict[str, torch.Tensor]) -> None:
    """Start SGD from carried momentum buffers (one per trainable parameter, by name).

    A zero buffer is the same as a fresh optimiser (with dampening 0, SGD's first step sets
    ``buf = grad``, and ``0.9 * 0 + grad`` is that too), so round 1 needs no special case."""
    params = dict(model.named_parameters())
    if set(momentum) != set(params):
        raise MomentumMismatch("the momentum buffers do not match the model's parameters")
    for name, p in params.items():
        if tuple(momentum[name].shape) != tuple(p.shape):
            raise MomentumMismatch(f"the momentum buffer of {name} has the wrong shape")
        optimizer.state[p]["momentum_buffer"] = momentum[name].to(p.dtype).clone()


def momentum_of(model, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's momentum buffers by parameter name (:func:`load_momentum` set one
    for every parameter)."""
    return {name: optimizer.state[p]["momentum_buffer"].detach().clone()
            for name, p in model.named_parameters()}


def train_round(data: SiteData, state: dict[str, torch.Tensor], config: TrainConfig,
                server_round: int, local_epochs: int, global_counts: list[int],
                seed: int, proximal_mu: float = 0.0, temperatures: list[float] | None = None,
                momentum: dict[str, torch.Tensor] | None = None
                ) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor] | None]:
    """Score the received weights, then train global epochs of this round on the fit part.

    ``momentum``: the federation's carried SGD momentum buffers, or None to start the
    optimiser afresh. Returns the new state dict, the metrics the site may share and (when
    ``momentum`` was given) the optimiser's buffers at the end of the round."""
    t0 = time.perf_counter()
    local_seed = site_seed(seed, data.site, server_round)
    seed_everything(local_seed)
    model = _model(config, data, state)
    metrics = score(model, data, temperatures)
    t_eval = time.perf_counter() - t0
    local = config.replace(seed=local_seed)
    optimizer = make_optimizer(model, local)
    if momentum is not None:
        load_momentum(model, optimizer, momentum)
    weights = class_weights(global_counts) if config.class_weighted else None
    augment = make_augment(local)
    penalty = None
    if proximal_mu > 0:
        anchor = {k: v.detach().clone() for k, v in model.named_parameters()}
        penalty = proximal_term(model, anchor, proximal_mu)
    loss_sum, seen = 0.0, 0
    for epoch in epochs_of_round(server_round, local_epochs):
        row = train_epoch(model, optimizer, data.fit, local, epoch, weights, augment, penalty)
        loss_sum += row["loss"] * row["n"]
        seen += row["n"]
    log.info("round %d: %d local epochs on %d studies in %.1f s", server_round,
             local_epochs, len(data.fit), time.perf_counter() - t0)
    metrics.update({"num-examples": len(data.fit), "train-loss-sum": loss_sum,
                    "train-seen": seen,
                    "seconds-eval": t_eval, "seconds-train": time.perf_counter() - t0 - t_eval})
    new_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return new_state, metrics, (momentum_of(model, optimizer) if momentum is not None
                                else None)


def evaluate_weights(data: SiteData, state: dict[str, torch.Tensor], config: TrainConfig,
                     temperatures: list[float] | None, temperature: float = 1.0) -> dict:
    model = _model(config, data, state)
    return {**score(model, data, temperatures, temperature), "num-examples": len(data.test)}
