"""The federated run folder::

    RUN/status.json              {"state": "running" | "completed" | "failed", "round", "message"}
    RUN/rounds.jsonl             one line per round (and one for the final evaluation)
    RUN/checkpoints/round-NNNN.pt
    RUN/model.pt                 the selected weights, in the centralized format
    RUN/metrics.json             pooled test metrics in the centralized schema + federation facts
    RUN/report.md, RUN/accuracy_per_round.png, RUN/confusion_matrix.png

``status.json`` and ``rounds.jsonl`` are what ``flower-server`` (and the tests) watch:
Flower's own run status says only whether the ServerApp process ended well.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..common import __version__  # noqa: E402
from ..common.models import parameter_count, build_model  # noqa: E402
from ..common.reporting import (PAPER_ACCURACY, confusion_markdown,  # noqa: E402
                                plot_confusion_matrix, table1_markdown)
from ..common.training.artifacts import save_model  # noqa: E402


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def write_status(out: Path, state: str, round_: int, message: str = "") -> None:
    _write_atomic(out / "status.json", json.dumps(
        {"state": state, "round": round_, "message": message, "time": time.time(),
         "spinemet_version": __version__}, indent=1) + "\n")


def read_status(out: Path) -> dict:
    try:
        return json.loads((Path(out) / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def append_round(out: Path, row: dict) -> None:
    with open(out / "rounds.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def read_rounds(out: Path) -> list[dict]:
    path = Path(out) / "rounds.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_accuracy_per_round(history: list[dict], path: Path, best_round: int,
                            centralized: float | None = None) -> Path:
    rows = sorted((h for h in history if h.get("evaluated_round") is not None),
                  key=lambda h: h["evaluated_round"])
    x = [h["evaluated_round"] for h in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for key, label in (("test_accuracy", "pooled test (sites)"),
                       ("val_accuracy", "pooled validation (sites)"),
                       ("server_test_accuracy", "coordinator's held-out set")):
        if any(key in h for h in rows):
            ax.plot(x, [h.get(key, float("nan")) for h in rows], marker=".", label=label)
    ax.axvline(best_round, color="grey", ls=":", lw=1, label=f"selected (round {best_round})")
    if centralized is not None:
        ax.axhline(centralized, color="k", ls="--", lw=1, label="centralized")
    ax.axhline(PAPER_ACCURACY, color="tab:red", ls=":", lw=1, label="paper 96.45 %")
    ax.set_xlabel("round (0 = initial weights)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_final(out: Path, settings, config, metrics: dict, history: list[dict], best: dict,
                temperature: float, input_shape, pipeline_hash: str, pipeline_params: dict
                ) -> None:
    model = build_model(config.model, tuple(input_shape))
    model.load_state_dict(best["weights"])
    save_model(out / "model.pt", model, {
        "model": config.model, "input_shape": list(input_shape),
        "parameters": parameter_count(model), "temperature": temperature,
        "best_round": best["round"], "config": config.to_dict(),
        "federation": settings.to_dict(),
        "preprocessing": {"hash": pipeline_hash,
                          "params": json.loads(json.dumps(pipeline_params, default=list))}})
    metrics = {**metrics, "model": config.model, "best_round": best["round"],
               "temperature": temperature, "strategy": settings.strategy,
               "num_rounds": settings.num_rounds, "local_epochs": settings.local_epochs,
               "seed": settings.seed, "split_seed": settings.split_seed,
               "federated": True}
    _write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    plot_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png",
                          f"federated {config.model}: pooled test (n = {metrics['n_test']})")
    plot_accuracy_per_round(history, out / "accuracy_per_round.png", best["round"])
    lo, hi = metrics.get("accuracy_ci95", (float("nan"),) * 2)
    auc = metrics.get("auc_macro")
    lines = [
        f"# Federated training: `{config.model}` with {settings.strategy}",
        "",
        "Metrics are pooled from the sites' confusion counts and sums (no per-patient value "
        "left a site). **On the synthetic cohort, accuracy is a property of the software, not "
        "clinical evidence.**",
        "",
        f"- {settings.num_rounds} rounds x {settings.local_epochs} local epochs; selected round "
        f"{best['round']} (lowest pooled validation loss); temperature {temperature:.2f}",
        f"- pooled test patients: {metrics['n_test']}; **accuracy "
        f"{100 * metrics['accuracy']:.2f} %** (bootstrap 95 % interval {100 * lo:.2f} to "
        f"{100 * hi:.2f} %); paper {100 * PAPER_ACCURACY:.2f} %",
        f"- macro F1 {metrics['macro_f1']:.4f}; macro AUC "
        f"{'n/a' if auc is None else f'{auc:.4f}'} (from {metrics.get('auc_binned')}-bin "
        f"score histograms); ECE {metrics['ece']:.4f}; Brier {metrics['brier']:.4f}",
        "",
        "## Table 1", "", table1_markdown(metrics), "",
        "## Confusion matrix", "", confusion_markdown(metrics["confusion_matrix"]), "",
        "![confusion matrix](confusion_matrix.png)", "",
        "## Accuracy per round", "", "![accuracy per round](accuracy_per_round.png)", "",
        "Per-round numbers: `rounds.jsonl`.", "",
        "## Settings", "", "| setting | value |", "|---|---|",
    ]
    lines += [f"| {k} | `{v}` |" for k, v in settings.to_dict().items()]
    _write_atomic(out / "report.md", "\n".join(lines) + "\n")
