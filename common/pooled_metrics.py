"""Evaluation that crosses the network as counts and sums only.

A site scores the model on its held-out patients and sends an :func:`evaluation_summary`:
a 3x3 confusion matrix, loss and Brier sums, calibration-bin counts and per-class
score histograms. None of it names a patient or holds a per-patient value. The coordinator
adds the summaries (:func:`add_summaries`) and reads the centralized ``metrics.json``
schema off the sum (:func:`metrics_from_summary`):

* accuracy, macro F1, per-class precision/recall/F1/support, the confusion matrix, the
  bootstrap interval of accuracy, the mean loss and the Brier score are exact: they depend
  on counts and sums only;
* ECE is exact for the same 10 confidence bins :func:`~.metrics.expected_calibration_error`
  uses (count, summed confidence and summed correctness per bin);
* macro one-vs-rest AUC comes from per-class score histograms (``AUC_BINS`` bins): scores
  inside one bin count as ties, so it can differ from the per-patient AUC by a little
  (``auc_binned`` says so in the metrics).

The summary is a flat ``{name: float | list[float]}`` dict so it fits a Flower
``MetricRecord`` as it is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from .metrics import LABELS, bootstrap_accuracy, metrics_from_confusion

K = len(LABELS)
ECE_BINS = 10
AUC_BINS = 200


def _bin_of(values: np.ndarray, bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(values, edges[1:-1], right=True), 0, bins - 1)


def evaluation_summary(logits: torch.Tensor, y: torch.Tensor, prefix: str = "",
                       temperatures: list[float] | None = None, temperature: float = 1.0
                       ) -> dict[str, float | list]:
    """Counts and sums of one site's evaluation (``prefix`` names the slice, e.g. 'test-').

    With ``temperatures``, also the summed negative log-likelihood at each temperature
    (``nll-by-t``): the coordinator fits temperature scaling on the pooled validation
    loss without seeing a single logit. Probabilities and the loss are taken at
    ``temperature``."""
    logits = logits.float() / temperature
    y_np = y.numpy().astype(int)
    proba = torch.softmax(logits, 1).numpy() if len(y_np) else np.zeros((0, K))
    pred = proba.argmax(1)
    cm = np.zeros((K, K), int)
    np.add.at(cm, (y_np, pred), 1)
    conf, correct = proba.max(1) if len(y_np) else np.zeros(0), (pred == y_np).astype(float)
    which = _bin_of(conf, ECE_BINS)
    onehot = np.eye(K)[y_np] if len(y_np) else np.zeros((0, K))
    out: dict[str, float | list] = {
        "n": float(len(y_np)),
        "confusion": cm.ravel().astype(float).tolist(),
        "loss-sum": float(F.cross_entropy(logits, y, reduction="sum")) if len(y_np) else 0.0,
        "brier-sum": float(((proba - onehot) ** 2).sum()),
        "ece-count": np.bincount(which, minlength=ECE_BINS).astype(float).tolist(),
        "ece-conf": np.bincount(which, conf, minlength=ECE_BINS).tolist(),
        "ece-correct": np.bincount(which, correct, minlength=ECE_BINS).tolist(),
    }
    for c in range(K):
        scores = _bin_of(proba[:, c], AUC_BINS)
        pos = y_np == c
        out[f"auc-pos-{c}"] = np.bincount(scores[pos], minlength=AUC_BINS).astype(float).tolist()
        out[f"auc-neg-{c}"] = np.bincount(scores[~pos], minlength=AUC_BINS).astype(float).tolist()
    if temperatures:
        out["nll-by-t"] = [float(F.cross_entropy(logits * temperature / t, y, reduction="sum"))
                           if len(y_np) else 0.0 for t in temperatures]
    return {prefix + k: v for k, v in out.items()}


def add_summaries(summaries: list[dict], prefix: str = "") -> dict[str, float | list]:
    """Element-wise sum of the summaries' ``prefix``-keys (prefix removed)."""
    total: dict[str, np.ndarray] = {}
    for s in summaries:
        for key, value in s.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            v = np.asarray(value, float)
            total[name] = total[name] + v if name in total else v.copy()
    return {k: (v.tolist() if v.ndim else float(v)) for k, v in total.items()}


def _binned_auc(total: dict) -> float | None:
    centres = (np.arange(AUC_BINS) + 0.5) / AUC_BINS
    aucs = []
    for c in range(K):
        pos, neg = np.asarray(total[f"auc-pos-{c}"]), np.asarray(total[f"auc-neg-{c}"])
        if pos.sum() == 0 or neg.sum() == 0:
            return None
        y = np.r_[np.ones(AUC_BINS), np.zeros(AUC_BINS)]
        aucs.append(roc_auc_score(y, np.r_[centres, centres], sample_weight=np.r_[pos, neg]))
    return float(np.mean(aucs))


def metrics_from_summary(total: dict, bootstrap: int = 2000) -> dict:
    """The centralized ``metrics.json`` fields from a pooled summary."""
    n = int(round(total.get("n", 0)))
    if n == 0:
        raise ValueError("no evaluated example in the pooled summary")
    cm = np.rint(np.asarray(total["confusion"])).astype(int).reshape(K, K)
    out = metrics_from_confusion(cm)
    count, conf = np.asarray(total["ece-count"]), np.asarray(total["ece-conf"])
    correct = np.asarray(total["ece-correct"])
    used = count > 0
    out.update({
        "auc_macro": _binned_auc(total), "auc_binned": AUC_BINS,
        "ece": float(np.sum(np.abs(correct[used] - conf[used])) / n),
        "brier": float(total["brier-sum"]) / n,
        "loss": float(total["loss-sum"]) / n,
    })
    if bootstrap:
        y_true = np.repeat(np.repeat(LABELS, K), cm.ravel())
        y_pred = np.repeat(np.tile(LABELS, K), cm.ravel())
        out["accuracy_ci95"] = list(bootstrap_accuracy(y_true, y_pred, bootstrap))
    return out
