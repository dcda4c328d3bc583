"""Score a trained model on every labelled study of another cohort (a large extra test
cohort drawn from another seed, or another hospital's data): the 189-patient test split
moves by 0.53 points per patient, an extra cohort of thousands pins the accuracy down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..common.dataset import SpineDataset
from ..common.metrics import classification_metrics
from ..common.models import probabilities
from ..common.preprocess.pipeline import default_pipeline
from ..common.preprocess.runner import preprocess
from ..common.training.artifacts import load_model
from ..common.training.loop import load_tensors, predict_logits
from .errors import error_analysis


def evaluate_model(model_path: Path, data: Path, cache: Path, rows: list[dict] | None,
                   workers: int | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> dict:
    pipeline = default_pipeline()
    model, meta = load_model(model_path, pipeline.hash(), pipeline.output_shape)
    summary = preprocess(data, cache, rows, pipeline, workers, progress)
    ds = SpineDataset(cache, split="all", pipeline_hash=summary.pipeline_hash)
    tensors = load_tensors(ds, progress and (lambda d, t: progress("loading tensors", d, t)))
    logits = predict_logits(model, tensors.x)
    proba = probabilities(logits, float(meta.get("temperature", 1.0))).numpy()
    metrics = classification_metrics(tensors.y.numpy(), proba)
    metrics.update({"model_file": str(model_path), "model": meta["model"], "data": str(data),
                    "failed_studies": len(summary.failed)})
    analysis = error_analysis(data, tensors.patient_ids, tensors.y.numpy(), proba.argmax(1))
    if analysis is not None:
        metrics["error_groups"] = analysis["groups"]
    return metrics


def summarise_runs(runs: list[Path]) -> list[dict]:
    """One row per run folder: model, seed, test accuracy and interval, macro F1, AUC, and
    the extra cohort's accuracy when ``RUN/extra_metrics.json`` exists."""
    rows = []
    for run in runs:
        m = json.loads((Path(run) / "metrics.json").read_text())
        extra_path = Path(run) / "extra_metrics.json"
        extra = json.loads(extra_path.read_text()) if extra_path.exists() else {}
        rows.append({"run": str(run), "model": m["model"], "seed": m["seed"],
                     "accuracy": m["accuracy"], "ci95": m.get("accuracy_ci95"),
                     "macro_f1": m["macro_f1"], "auc_macro": m["auc_macro"],
                     "ece": m["ece"], "confusion_matrix": m["confusion_matrix"],
                     "extra_accuracy": extra.get("accuracy"),
                     "extra_ci95": extra.get("accuracy_ci95"),
                     "extra_n": extra.get("n_test")})
    return rows
