"""What a run leaves for people: Table 1 beside the paper's, the confusion matrix (the
paper's Fig. 5), the learning curve, the history as CSV. Plots through matplotlib (Agg) and
scikit-learn's ConfusionMatrixDisplay."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from .models import CLASS_NAMES  # noqa: E402

# Wang et al. 2023, Table 1 ("accuracy" column = precision) and the abstract's accuracy.
PAPER_TABLE1 = {
    "normal": {"precision": 0.9721, "recall": 0.95, "f1": 0.97},
    "mild": {"precision": 0.9521, "recall": 0.96, "f1": 0.96},
    "apparent": {"precision": 0.9568, "recall": 0.98, "f1": 0.95},
}
PAPER_ACCURACY = 0.9645
PAPER_ACCURACY_CONCLUSION = 0.9654
PAPER_N = 941
PAPER_CLASS_COUNTS = (305, 320, 316)


def write_history_csv(history: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    return path


def plot_confusion_matrix(cm, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=120)
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(CLASS_NAMES)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_learning_curve(history: list[dict], path: Path, best: int | None = None,
                        x_key: str = "epoch", title: str = "learning curve") -> Path:
    x = [h[x_key] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    for key, label in (("train_loss", "training (weighted, augmented)"),
                       ("val_loss", "validation")):
        if any(key in h for h in history):
            a1.plot(x, [h.get(key, np.nan) for h in history], label=label)
    for key, label in (("train_accuracy", "training (augmented)"),
                       ("val_accuracy", "validation"), ("test_accuracy", "test")):
        if any(key in h for h in history):
            a2.plot(x, [h.get(key, np.nan) for h in history], label=label)
    a1.set_ylabel("cross-entropy")
    a2.set_ylabel("accuracy")
    for a in (a1, a2):
        a.set_xlabel(x_key)
        if best:
            a.axvline(best, color="grey", ls=":", lw=1, label=f"selected ({x_key} {best})")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def table1_markdown(metrics: dict) -> str:
    """The paper's Table 1 layout with this run's numbers beside the paper's."""
    lines = ["| class | precision (paper's \"accuracy\") | recall | F1 | support | "
             "paper: precision / recall / F1 |", "|---|---|---|---|---|---|"]
    for name in CLASS_NAMES:
        m, p = metrics["per_class"][name], PAPER_TABLE1[name]
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | "
                     f"{m['support']} | {p['precision']:.4f} / {p['recall']:.2f} / "
                     f"{p['f1']:.2f} |")
    return "\n".join(lines)


def confusion_markdown(cm) -> str:
    cm = np.asarray(cm)
    head = "| true \\ predicted | " + " | ".join(CLASS_NAMES) + " |"
    rows = [head, "|---" * (len(CLASS_NAMES) + 1) + "|"]
    rows += [f"| {CLASS_NAMES[i]} | " + " | ".join(str(int(v)) for v in cm[i]) + " |"
             for i in range(len(cm))]
    return "\n".join(rows)


def paper_inconsistencies() -> list[str]:
    """What does not add up in the paper's reported numbers (computed, not asserted)."""
    notes = []
    for name, p in PAPER_TABLE1.items():
        f1 = 2 * p["precision"] * p["recall"] / (p["precision"] + p["recall"])
        if round(f1, 2) != p["f1"]:
            notes.append(f"class {name}: precision {p['precision']} and recall {p['recall']} "
                         f"give F1 {f1:.4f}, the paper reports {p['f1']}")
    n_test = sorted({int(np.floor(0.2 * PAPER_N)), int(np.ceil(0.2 * PAPER_N))})
    for n in n_test:
        k = round(PAPER_ACCURACY * n)
        notes.append(f"{PAPER_ACCURACY:.2%} of {n} test patients is {PAPER_ACCURACY * n:.2f} "
                     f"patients; the nearest attainable accuracies are {(k - 1) / n:.2%}, "
                     f"{k / n:.2%} and {(k + 1) / n:.2%}")
    notes.append(f"the conclusion reports {PAPER_ACCURACY_CONCLUSION:.2%}, the abstract and "
                 f"results {PAPER_ACCURACY:.2%}")
    return notes
