"""What the coordinator and the hospitals say to each other (no Flower import here).

Three message kinds, each one Flower message per site:

``query.hello``
    Coordinator -> site: the package version, model name, input shape and preprocessing
    hash (:func:`fingerprint`). The site refuses with :data:`E_MISMATCH` when its installed
    code differs; otherwise it answers with its patient counts per class and part
    (fit / validation / test): the coordinator sums them into the global class counts the
    loss weights come from.
``train``
    Coordinator -> site: the global weights of round ``r - 1``, the round, the training
    config. The site first scores the weights it received on its validation and test
    patients (counts and sums only: :mod:`.pooled_metrics`), then trains its local epochs
    of global epochs ``[(r-1)E, rE)`` and returns the new weights with its example count.
    One message per round carries both, which halves Flower's per-message cost. With
    ``client-momentum = carry`` the same arrays also hold the SGD momentum buffers
    (:data:`MOMENTUM_PREFIX` + parameter name): the site starts its optimiser from the
    federation's averaged buffers and returns its own, so momentum runs on across rounds
    as in the centralized run instead of restarting from zero every round.
``evaluate``
    Coordinator -> site: the selected weights and a grid of temperatures; the site returns
    the summaries of its validation and test patients (with the validation NLL per
    temperature, for temperature scaling).

Nothing else leaves a site: a failure is one of the fixed :data:`ERRORS` codes with a
message built from this module's templates, never an exception's text.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from . import __version__

# Message types (Flower routes "<category>.<action>").
HELLO = "query.hello"
TRAIN = "train"
EVALUATE = "evaluate"

# Error codes a site may reply with, and the only texts that go with them.
E_MISMATCH = 101
E_NO_DATA = 102
E_BAD_REQUEST = 103
E_INTERNAL = 199
ERRORS = {
    E_MISMATCH: "the site's installed SpineMet differs from the coordinator's",
    E_NO_DATA: "the site has no trainable data",
    E_BAD_REQUEST: "the site could not read the coordinator's request",
    E_INTERNAL: "the site's training failed; its operator has the details in the site's log",
}

#: array-name prefix of the carried SGD momentum buffers in a ``train`` message and reply
MOMENTUM_PREFIX = "momentum/"
CLIENT_MOMENTUM = ("carry", "restart")

# Temperatures the sites score for temperature scaling (log-spaced, 0.5 .. 5).
TEMPERATURE_GRID = [round(float(t), 4) for t in np.geomspace(0.5, 5.0, 41)]


class SiteRefusal(Exception):
    """A failure a site reports by code; ``detail`` is a template-built, data-free text."""

    def __init__(self, code: int, detail: str = "", reason: str | None = None):
        self.code, self.detail = code, detail
        base = ERRORS.get(code, ERRORS[E_INTERNAL])
        # ``reason``: a text this module already built (relayed from the site worker)
        self.reason = reason if reason is not None else (
            f"{base}: {detail}" if detail else base)
        super().__init__(self.reason)


def fingerprint(model: str, input_shape, pipeline_hash: str) -> dict[str, str]:
    """What both sides must agree on before a site trains."""
    return {"spinemet-version": __version__, "model": model,
            "input-shape": "x".join(str(int(s)) for s in input_shape),
            "preprocessing-hash": pipeline_hash}


def fingerprint_mismatch(coordinator: dict, site: dict) -> str | None:
    """A data-free description of the first difference, or None when they agree."""
    for key in ("spinemet-version", "model", "input-shape", "preprocessing-hash"):
        a, b = str(coordinator.get(key, "")), str(site.get(key, ""))
        if a != b:
            if key == "preprocessing-hash":
                a, b = a[:12], b[:12]
            return (f"{key} is {b} at the site and {a} at the coordinator; install the same "
                    "SpineMet release on both sides")
    return None


def split_momentum(arrays: dict) -> tuple[dict, dict]:
    """(model arrays, momentum buffers by parameter name) of a ``train`` message."""
    weights = {k: v for k, v in arrays.items() if not k.startswith(MOMENTUM_PREFIX)}
    momentum = {k[len(MOMENTUM_PREFIX):]: v for k, v in arrays.items()
                if k.startswith(MOMENTUM_PREFIX)}
    return weights, momentum


def join_momentum(weights: dict, momentum: dict) -> dict:
    """The inverse of :func:`split_momentum`."""
    return {**weights, **{MOMENTUM_PREFIX + k: v for k, v in momentum.items()}}


def site_seed(seed: int, site: str, server_round: int) -> int:
    """The local training seed of a site in a round: reproducible, distinct per site."""
    digest = hashlib.sha256(f"{seed}:{site}:{server_round}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def epochs_of_round(server_round: int, local_epochs: int) -> range:
    """Global epochs a site trains in round ``server_round`` (1-based)."""
    return range((server_round - 1) * local_epochs, server_round * local_epochs)


def check_update(update: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                 num_examples: float, max_examples: int) -> tuple[str | None, int]:
    """(reason to exclude or None, example count to weight by).

    Excluded: missing/extra tensors, a wrong shape, NaN or Inf, a count that is not a
    positive integer. A count above ``max_examples`` (what the site declared at hello) is
    capped to it, so one site cannot claim the federation's weight."""
    if set(update) != set(reference):
        missing, extra = set(reference) - set(update), set(update) - set(reference)
        return (f"tensor names differ (missing {sorted(missing)[:3]}, extra "
                f"{sorted(extra)[:3]})", 0)
    for name, ref in reference.items():
        arr = update[name]
        if tuple(arr.shape) != tuple(ref.shape):
            return f"{name} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}", 0
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            return f"{name} holds NaN or Inf", 0
    if not (isinstance(num_examples, (int, float)) and math.isfinite(num_examples)
            and num_examples >= 1 and float(num_examples).is_integer()):
        return f"implausible example count {num_examples!r}", 0
    return None, int(min(int(num_examples), max_examples))
