"""Classification metrics, all through scikit-learn (and numpy for the calibration error).

:func:`classification_metrics` gives what ``metrics.json`` holds: accuracy, macro F1,
macro one-vs-rest AUC, the confusion matrix (rows = true class), per-class precision
(the paper's "accuracy" column of Table 1), recall, F1 and support, the expected
calibration error, the multi-class Brier score and a bootstrap 95 % interval for accuracy.
:func:`metrics_from_confusion` gives the same counts-based metrics from a summed confusion
matrix (what federated evaluation can pool exactly).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)
from sklearn.preprocessing import label_binarize
from sklearn.utils import resample

from .models import CLASS_NAMES

LABELS = list(range(len(CLASS_NAMES)))


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: |accuracy - confidence| per confidence bin, weighted by bin size."""
    conf = proba.max(1)
    correct = (proba.argmax(1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def brier_multiclass(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean over examples of the squared distance to the one-hot label (0 best, 2 worst)."""
    onehot = label_binarize(y_true, classes=LABELS)
    return float(((proba - onehot) ** 2).sum(1).mean())


def bootstrap_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % interval of accuracy over patients resampled with replacement."""
    idx = np.arange(len(y_true))
    stats = [accuracy_score(y_true[s], y_pred[s])
             for s in (resample(idx, random_state=seed + i) for i in range(n))]
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def per_class(y_true, y_pred) -> dict:
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=LABELS,
                                                 zero_division=0)
    return {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                   "support": int(s[i])} for i, name in enumerate(CLASS_NAMES)}


def classification_metrics(y_true, proba, bootstrap: int = 2000) -> dict:
    y_true = np.asarray(y_true, int)
    proba = np.asarray(proba, float)
    y_pred = proba.argmax(1)
    present = np.unique(y_true)
    try:
        auc = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro",
                                  labels=LABELS)) if len(present) == len(LABELS) else None
    except ValueError:
        auc = None
    out = {
        "n_test": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=LABELS, average="macro",
                                   zero_division=0)),
        "auc_macro": auc,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=LABELS).tolist(),
        "per_class": per_class(y_true, y_pred),
        "ece": expected_calibration_error(y_true, proba),
        "brier": brier_multiclass(y_true, proba),
    }
    if bootstrap and len(y_true):
        lo, hi = bootstrap_accuracy(y_true, y_pred, bootstrap)
        out["accuracy_ci95"] = [lo, hi]
    return out


def metrics_from_confusion(cm) -> dict:
    """Accuracy, macro F1 and per-class metrics from a confusion matrix of counts."""
    cm = np.asarray(cm, int)
    y_true = np.repeat(np.repeat(LABELS, cm.shape[1]), cm.ravel())
    y_pred = np.repeat(np.tile(LABELS, cm.shape[0]), cm.ravel())
    return {"n_test": int(cm.sum()), "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=LABELS, average="macro",
                                       zero_division=0)),
            "confusion_matrix": cm.tolist(), "per_class": per_class(y_true, y_pred)}
