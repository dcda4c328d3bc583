"""The centralized baseline: every training patient in one place, the shared protocol.

``spinemet train`` runs :func:`train_centralized`: preprocess (the cache makes a second run
cost seconds), split 80/20 by patient (the one split function), take the validation slice
of the training patients, fit, calibrate, evaluate once on the test patients and write the
run folder::

    RUN/model.pt               weights + metadata (loads with torch.load(weights_only=True))
    RUN/split.json             patient ids per side (train, of which validation; test)
    RUN/metrics.json           test metrics (accuracy, macro F1, AUC, Table 1, ECE, Brier, CI)
    RUN/history.csv            per epoch: lr, losses, accuracies
    RUN/confusion_matrix.png   the paper's Fig. 5 for this run
    RUN/learning_curve.png
    RUN/report.md              Table 1 beside the paper's, figures, notes
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..common import __version__
from ..common.metrics import classification_metrics
from ..common.models import parameter_count, probabilities
from ..common.preprocess.pipeline import Pipeline, default_pipeline
from ..common.preprocess.runner import preprocess
from ..common.training.artifacts import save_model
from ..common.training.fit import fit
from ..common.training.loop import Tensors, evaluate
from ..common.training.data import split_tensors
from ..common.training.protocol import TrainConfig
from .errors import error_analysis
from .report import write_run_report

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class RunResult:
    out: Path
    metrics: dict
    best_epoch: int
    temperature: float
    seconds: float


def prepare_data(data: Path, cache: Path, rows: list[dict] | None, workers: int | None,
                 pipeline: Pipeline, progress: Progress | None = None):
    summary = preprocess(data, cache, rows, pipeline, workers, progress)
    if summary.failed:
        log.warning("%d studies failed preprocessing and are left out (see `spinemet "
                    "preprocess` for the reasons)", len(summary.failed))
    return summary


def write_split(path: Path, fit_set: Tensors, val: Tensors, test: Tensors, config: TrainConfig
                ) -> None:
    path.write_text(json.dumps({
        "split_seed": config.split_seed, "test_fraction": config.test_fraction,
        "val_fraction": config.val_fraction,
        "train": sorted(fit_set.patient_ids + val.patient_ids),
        "validation": sorted(val.patient_ids), "test": sorted(test.patient_ids)}, indent=1) + "\n")


def train_centralized(data: Path, cache: Path, out: Path, config: TrainConfig,
                      rows: list[dict] | None = None, workers: int | None = None,
                      progress: Progress | None = None,
                      pipeline: Pipeline | None = None) -> RunResult:
    t0 = time.perf_counter()
    pipeline = pipeline or default_pipeline()
    out.mkdir(parents=True, exist_ok=True)
    summary = prepare_data(data, cache, rows, workers, pipeline, progress)
    fit_set, val, test = split_tensors(cache, summary.pipeline_hash, config, progress)
    if len(test) == 0 or len(fit_set) == 0:
        raise ValueError(f"{data}: too few labelled studies to split ({len(fit_set)} to fit, "
                         f"{len(test)} to test)")
    write_split(out / "split.json", fit_set, val, test, config)
    result = fit(config, fit_set, val,
                 progress=progress and (lambda e, row: progress("training (epochs)", e,
                                                                config.epochs)))
    logits = evaluate(result.model, test)["logits"]
    proba = probabilities(logits, result.temperature).numpy()
    metrics = classification_metrics(test.y.numpy(), proba)
    raw = probabilities(logits).numpy()
    metrics["ece_uncalibrated"] = classification_metrics(test.y.numpy(), raw, bootstrap=0)["ece"]
    metrics.update({"model": config.model, "best_epoch": result.best_epoch,
                    "temperature": result.temperature, "n_fit": len(fit_set),
                    "n_validation": len(val), "class_counts_fit": fit_set.class_counts(),
                    "seed": config.seed, "split_seed": config.split_seed})
    save_model(out / "model.pt", result.model, {
        "model": config.model, "input_shape": list(fit_set.x.shape[1:]),
        "parameters": parameter_count(result.model), "temperature": result.temperature,
        "best_epoch": result.best_epoch, "config": config.to_dict(),
        "preprocessing": {"hash": summary.pipeline_hash, "params": json.loads(
            json.dumps(pipeline.params(), default=list))},
        "trained_on": {"data": str(Path(data).resolve()), "n_fit": len(fit_set),
                       "n_validation": len(val), "n_test": len(test)}})
    analysis = error_analysis(data, test.patient_ids, test.y.numpy(), proba.argmax(1))
    if analysis is not None:
        metrics["error_analysis"] = analysis
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_run_report(out, metrics, result.history, config, result.best_epoch,
                     data=str(data), version=__version__)
    return RunResult(out, metrics, result.best_epoch, result.temperature,
                     time.perf_counter() - t0)

