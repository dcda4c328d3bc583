"""``report.md`` of a training run: Table 1 beside the paper's, the confusion matrix (the
paper's Fig. 5), the learning curve and what the paper's own numbers leave unclear."""

from __future__ import annotations

from pathlib import Path

from ..common.reporting import (PAPER_ACCURACY, confusion_markdown, paper_inconsistencies,
                                plot_confusion_matrix, plot_learning_curve, table1_markdown,
                                write_history_csv)
from ..common.training.protocol import TrainConfig
from .errors import errors_markdown


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def write_run_report(out: Path, metrics: dict, history: list[dict], config: TrainConfig,
                     best_epoch: int, data: str, version: str) -> Path:
    write_history_csv(history, out / "history.csv")
    plot_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png",
                          f"{config.model}: test patients (n = {metrics['n_test']})")
    plot_learning_curve(history, out / "learning_curve.png", best_epoch,
                        title=f"{config.model}, seed {config.seed}")
    lo, hi = metrics.get("accuracy_ci95", (float("nan"),) * 2)
    auc = metrics.get("auc_macro")
    one = 1 / metrics["n_test"] if metrics["n_test"] else float("nan")
    lines = [
        f"# Centralized training: `{config.model}`",
        "",
        f"Data: `{data}` (spinemet {version}). **On the synthetic cohort, accuracy is a "
        "property of the software, not clinical evidence.**",
        "",
        f"- test patients: {metrics['n_test']} (one patient = {_pct(one)}); trained on "
        f"{metrics['n_fit']}, model chosen on {metrics['n_validation']} validation patients "
        f"(epoch {best_epoch} of {config.epochs}, lowest validation loss)",
        f"- **accuracy {_pct(metrics['accuracy'])}** (bootstrap 95 % interval "
        f"{_pct(lo)} to {_pct(hi)}); paper {_pct(PAPER_ACCURACY)}",
        f"- macro F1 {metrics['macro_f1']:.4f}; macro one-vs-rest AUC "
        f"{'n/a' if auc is None else f'{auc:.4f}'}",
        f"- calibration (temperature {metrics['temperature']:.2f}, fitted on the validation "
        f"patients): ECE {metrics['ece']:.4f} (before scaling "
        f"{metrics['ece_uncalibrated']:.4f}), Brier {metrics['brier']:.4f}",
        "",
        "## Table 1",
        "",
        table1_markdown(metrics),
        "",
        "## Confusion matrix (the paper's Fig. 5)",
        "",
        confusion_markdown(metrics["confusion_matrix"]),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "## Learning curve",
        "",
        "![learning curve](learning_curve.png)",
        "",
        "Per-epoch numbers: `history.csv`.",
        "",
    ]
    if metrics.get("error_analysis"):
        lines += ["## Errors against the ground truth", "",
                  "The synthetic cohort's ground truth says what each misclassified test "
                  "patient carries (metastases, their size and contrast, benign mimics):", "",
                  errors_markdown(metrics["error_analysis"]), ""]
    lines += ["## Training protocol", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in config.to_dict().items()]
    lines += ["", "## The paper's own numbers", "",
              "Read beside Table 1 above: the seed paper's figures do not all follow from "
              "each other.", ""]
    lines += [f"- {n}" for n in paper_inconsistencies()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
