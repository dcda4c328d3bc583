"""Scoring the centralized and the federated model on the same patients, and the paired
bootstrap of their accuracy gap.

Both ``model.pt`` files are read by the same loader and scored by the same code on the same
tensors (the common test split, the extra test cohort), at each model's own calibrated
temperature. The gap's interval resamples PATIENTS: each bootstrap draw scores both models
on the same resample, so the between-patient variance that both share cancels (a paired
interval is much narrower than two separate ones), and with several seeds each draw
averages the per-seed gaps on that same resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.metrics import classification_metrics
from ..common.models import probabilities
from ..common.training.artifacts import load_model
from ..common.training.loop import Tensors, predict_logits


@dataclass
class Scored:
    metrics: dict            # the metrics.json schema
    correct: np.ndarray      # bool per patient, in the tensors' order
    patient_ids: list[str]


def score_model(model_path: Path, data: Tensors, pipeline_hash: str | None = None,
                bootstrap: int = 2000) -> Scored:
    model, meta = load_model(model_path, pipeline_hash, tuple(data.x.shape[1:]))
    proba = probabilities(predict_logits(model, data.x), float(meta.get("temperature", 1.0)))
    proba = proba.detach().numpy()
    y = data.y.numpy()
    metrics = classification_metrics(y, proba, bootstrap=bootstrap)
    metrics["temperature"] = float(meta.get("temperature", 1.0))
    return Scored(metrics, proba.argmax(1) == y, list(data.patient_ids))


def paired_gap(central: list[Scored], federated: list[Scored], n_boot: int = 2000,
               seed: int = 0) -> tuple[float, list[float]]:
    """(gap, [low, high]) in percentage points: central minus federated accuracy, the mean
    over seeds, with its paired bootstrap 95 % interval (percentile method)."""
    if not central or len(central) != len(federated):
        raise ValueError("one centralized and one federated score per seed are needed")
    ids = central[0].patient_ids
    for s in central + federated:
        if s.patient_ids != ids:
            raise ValueError("the models were not scored on the same patients in the same "
                             "order: a paired comparison is impossible")
    # per patient: mean over seeds of (central correct - federated correct)
    diff = np.mean([c.correct.astype(float) - f.correct.astype(float)
                    for c, f in zip(central, federated)], axis=0)
    gap = 100.0 * float(diff.mean())
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for start in range(0, n_boot, 250):   # bounded memory for large cohorts
        idx = rng.integers(0, len(diff), size=(min(250, n_boot - start), len(diff)))
        draws[start:start + len(idx)] = diff[idx].mean(axis=1)
    low, high = np.percentile(100.0 * draws, [2.5, 97.5])
    return gap, [float(low), float(high)]


SUMMARY_KEYS = ("accuracy", "macro_f1", "auc_macro", "ece", "brier")


def mean_sd(per_seed: list[dict]) -> dict:
    """{key: {"mean", "sd", "n"}} of the scalar metrics over seeds (SD with ddof 1)."""
    out = {}
    for key in SUMMARY_KEYS:
        values = [m[key] for m in per_seed if m.get(key) is not None]
        if values:
            out[key] = {"mean": float(np.mean(values)),
                        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                        "n": len(values)}
    return out
