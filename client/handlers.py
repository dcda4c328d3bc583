"""What a site does for each message kind, on plain values (no Flower objects).

``handle(kind, node_config, config, arrays)`` returns ``(arrays or None, metrics)`` or
raises :class:`~spinemet.common.federation.SiteRefusal`. The ClientApp calls it in its own
process, or hands the request to the site's long-lived worker (:mod:`.worker`), which calls
it with the data already in memory.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ..common.federation import (E_BAD_REQUEST, E_MISMATCH, E_NO_DATA, EVALUATE, HELLO, TRAIN,
                                 SiteRefusal, fingerprint, fingerprint_mismatch, join_momentum,
                                 split_momentum)
from ..common.training.protocol import TrainConfig
from .local import MomentumMismatch, evaluate_weights, train_round
from .site_data import load_site

Arrays = dict[str, np.ndarray]


def _train_config(cfg: dict) -> TrainConfig:
    try:
        return TrainConfig(**json.loads(str(cfg["train-config"])))
    except Exception:
        raise SiteRefusal(E_BAD_REQUEST, "train-config is missing or not a training "
                          "configuration of this version") from None


def _site(node_config: dict, config: TrainConfig):
    try:
        data = load_site(node_config, config)
    except KeyError:
        raise SiteRefusal(E_NO_DATA, "the SuperNode's node config names no site or cache "
                          "(start it with `spinemet-client`)") from None
    except (FileNotFoundError, ValueError):
        raise SiteRefusal(E_NO_DATA, "no preprocessed, labelled study (run `spinemet "
                          "validate` at the site)") from None
    if len(data.fit) == 0:
        raise SiteRefusal(E_NO_DATA, "no training patient after the split")
    return data


def _check_fingerprint(cfg: dict, data) -> None:
    expected = {k: cfg.get(k) for k in ("spinemet-version", "model", "input-shape",
                                        "preprocessing-hash")}
    local = fingerprint(str(cfg.get("model")), data.input_shape, data.pipeline_hash)
    problem = fingerprint_mismatch(expected, local)
    if problem:
        raise SiteRefusal(E_MISMATCH, problem)


def _state(arrays: Arrays | None) -> dict[str, torch.Tensor]:
    if not arrays:
        raise SiteRefusal(E_BAD_REQUEST, "the message carries no weights")
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def _prepared(node_config: dict, cfg: dict):
    """(training config, the site's data) once the coordinator's fingerprint matches."""
    config = _train_config(cfg)
    data = _site(node_config, config)
    _check_fingerprint(cfg, data)
    return config, data


def hello(node_config: dict, cfg: dict, arrays: Arrays | None) -> tuple[None, dict]:
    _, data = _prepared(node_config, cfg)
    counts = data.counts()
    return None, {"num-examples": len(data.fit), "fit-counts": counts["fit"],
                  "val-counts": counts["val"], "test-counts": counts["test"]}


def train(node_config: dict, cfg: dict, arrays: Arrays | None) -> tuple[Arrays, dict]:
    config, data = _prepared(node_config, cfg)
    weights, buffers = split_momentum(arrays or {})
    state = _state(weights)
    momentum = _state(buffers) if buffers else None
    try:
        server_round, local_epochs = int(cfg["server-round"]), int(cfg["local-epochs"])
        counts = [int(c) for c in cfg["class-counts"]]
        seed, mu = int(cfg["seed"]), float(cfg.get("proximal-mu", 0.0))
        temperatures = [float(t) for t in cfg.get("temperatures", [])] or None
    except Exception:
        raise SiteRefusal(E_BAD_REQUEST, "the train message lacks round, local-epochs, "
                          "class-counts or seed") from None
    try:
        new_state, metrics, new_momentum = train_round(
            data, state, config, server_round, local_epochs, counts, seed, mu, temperatures,
            momentum)
    except MomentumMismatch:
        raise SiteRefusal(E_BAD_REQUEST, "the momentum buffers do not match the model") \
            from None
    out = {k: v.numpy() for k, v in new_state.items()}
    if new_momentum is not None:
        out = join_momentum(out, {k: v.numpy() for k, v in new_momentum.items()})
    return out, metrics


def evaluate(node_config: dict, cfg: dict, arrays: Arrays | None) -> tuple[None, dict]:
    config, data = _prepared(node_config, cfg)
    temperatures = [float(t) for t in cfg.get("temperatures", [])] or None
    temperature = float(cfg.get("temperature", 1.0))
    return None, evaluate_weights(data, _state(arrays), config, temperatures, temperature)


HANDLERS = {HELLO: hello, TRAIN: train, EVALUATE: evaluate}


def handle(kind: str, node_config: dict, config: dict, arrays: Arrays | None):
    if kind not in HANDLERS:
        raise SiteRefusal(E_BAD_REQUEST, f"unknown message type {kind!r}")
    return HANDLERS[kind](node_config, config, arrays)
