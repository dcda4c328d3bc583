"""``spinemet models``, ``spinemet train`` and ``spinemet predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the models: name, trainable parameters, input shape, what it is."""
    from rich.table import Table

    from .cli import console
    from .models import MODELS, build_model, parameter_count
    from .preprocess.pipeline import default_pipeline

    shape = default_pipeline().output_shape
    rows = [{"name": n, "parameters": parameter_count(build_model(n, shape)),
             "input_shape": list(shape), "summary": info.summary} for n, info in MODELS.items()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="models")
    for col in ("name", "parameters", "input (C x H x W)", "summary"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], f"{r['parameters']:,}", "x".join(map(str, r["input_shape"])),
                      r["summary"])
    console.print(table)


def train_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="Folder of DICOM studies with "
                                                              "labels (e.g. data/cohort).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write (model.pt, "
                                                            "metrics.json, report.md...).")],
    labels: Annotated[Optional[Path], typer.Option(help="labels.csv \\[default: "
                                                        "DATA/labels.csv].")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Preprocessing cache \\[default: "
                                                       "DATA/../cache].")] = None,
    model: Annotated[str, typer.Option(help="Model name (`spinemet models`).")] = "paper",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs \\[default: the model's].")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate \\[default: the "
                                                     "model's].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size \\[default: the "
                                                           "model's].")] = None,
    seed: Annotated[int, typer.Option(help="Training seed (weights, batch order, "
                                           "augmentation).")] = 0,
    split_seed: Annotated[int, typer.Option(help="Seed of the 80/20 patient split (keep it "
                                                 "fixed to compare runs).")] = 0,
    augment: Annotated[bool, typer.Option("--augment/--no-augment",
                                          help="Training augmentation.")] = True,
    workers: Annotated[Optional[int], typer.Option(help="Preprocessing processes \\[default: "
                                                        "all cores].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Write into a run folder that already holds "
                                                 "a model.")] = False,
) -> None:
    """Centralized training on one cohort, with Table 1 and the confusion matrix.

    Preprocesses (cached), splits 80/20 by patient, takes a validation slice of the training
    patients for model selection and calibration, trains, evaluates once on the test
    patients and writes RUN/ (model.pt, metrics.json, report.md, plots, history.csv).
    """
    import logging

    from rich.table import Table

    from .cli import _progress, console, labels_or_exit, stage_reporter
    from .training.protocol import TrainConfig

    if not data.is_dir():
        console.print(f"[red]error:[/red] --data {data} is not a folder")
        raise typer.Exit(2)
    if (out / "model.pt").exists() and not overwrite:
        console.print(f"[red]error:[/red] {out / 'model.pt'} exists: choose another --out or "
                      "pass --overwrite")
        raise typer.Exit(2)
    rows = labels_or_exit(labels or data / "labels.csv")
    try:
        config = TrainConfig.for_model(model, epochs=epochs, lr=lr, batch_size=batch_size,
                                       seed=seed, split_seed=split_seed, augment=augment)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--model")
    cache = cache or data.resolve().parent / "cache"
    from ..simulations.centralized import train_centralized

    with _progress() as bar:
        report = stage_reporter(bar)
        try:
            result = train_centralized(data, cache, out, config, rows, workers, report)
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1)
    m = result.metrics
    logging.getLogger(__name__).info("run written to %s", out)
    table = Table(title=f"{config.model}, seed {config.seed}: test patients", show_header=False)
    lo, hi = m["accuracy_ci95"]
    table.add_row("accuracy", f"{m['accuracy']:.4f} (95 % CI {lo:.4f}-{hi:.4f}, "
                              f"n = {m['n_test']})")
    table.add_row("macro F1 / AUC", f"{m['macro_f1']:.4f} / {m['auc_macro'] or float('nan'):.4f}")
    for name, pc in m["per_class"].items():
        table.add_row(name, f"precision {pc['precision']:.3f} recall {pc['recall']:.3f} "
                            f"F1 {pc['f1']:.3f}")
    table.add_row("confusion (rows true)", " / ".join(" ".join(map(str, r))
                                                       for r in m["confusion_matrix"]))
    table.add_row("selected epoch", f"{result.best_epoch} of {config.epochs}")
    table.add_row("temperature / ECE", f"{result.temperature:.2f} / {m['ece']:.3f}")
    table.add_row("time", f"{result.seconds:.0f} s")
    table.add_row("report", str(out / "report.md"))
    console.print(table)


def predict_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="RUN/model.pt of `spinemet "
                                                                "train`.")],
    studies: Annotated[list[Path], typer.Argument(help="Study folders (DICOM, any layout).")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list on stdout.")] = False,
    saliency: Annotated[Optional[Path], typer.Option(
        help="Write Grad-CAM maps (PNG + .npy) over each study's 2-D image here.")] = None,
) -> None:
    """Predict each study: class and calibrated probabilities (normal, mild, apparent)."""
    from .cli import console
    from .predict import Predictor
    from .training.artifacts import ModelMismatch

    try:
        predictor = Predictor(model)
    except ModelMismatch as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    preds = predictor.predict_study_dirs(studies, saliency)
    if as_json:
        print(json.dumps([p.to_dict() for p in preds], indent=2))
    else:
        for p in preds:
            if p.label is None:
                console.print(f"[red]{p.source}[/red]: {p.error}")
                continue
            probs = "  ".join(f"{k} {v:.3f}" for k, v in p.probabilities.items())
            print(f"{p.source}\t{p.label_name}\t{probs}" +
                  (f"\t{p.saliency}" if p.saliency else ""))
            if p.error:
                console.print(f"[yellow]{p.source}[/yellow]: {p.error}")
    if any(p.label is None for p in preds):
        raise typer.Exit(1)


def evaluate_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="RUN/model.pt of `spinemet "
                                                                "train`.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Folder of labelled DICOM studies: "
                                                              "every one is a test study.")],
    cache: Annotated[Optional[Path], typer.Option(help="Preprocessing cache \\[default: "
                                                       "DATA/../<DATA name>-cache].")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="labels.csv \\[default: "
                                                        "DATA/labels.csv].")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the metrics here (JSON) "
                                                     "\\[default: next to the model, "
                                                     "extra_metrics.json].")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Preprocessing processes.")] = None,
) -> None:
    """Score a trained model on every labelled study of another cohort.

    For example a large extra test cohort drawn from another seed: the 189-patient test
    split moves by 0.53 points per patient.
    """
    from .cli import _progress, console, labels_or_exit, stage_reporter
    from .training.artifacts import ModelMismatch

    from ..simulations.external import evaluate_model

    rows = labels_or_exit(labels or data / "labels.csv")
    cache = cache or data.resolve().parent / f"{data.resolve().name}-cache"
    with _progress() as bar:
        report = stage_reporter(bar)
        try:
            m = evaluate_model(model, data, cache, rows, workers, report)
        except ModelMismatch as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2)
    out = out or model.parent / "extra_metrics.json"
    out.write_text(json.dumps(m, indent=2) + "\n")
    lo, hi = m["accuracy_ci95"]
    print(f"{data}: accuracy {m['accuracy']:.4f} (95 % CI {lo:.4f}-{hi:.4f}, n = {m['n_test']}), "
          f"macro F1 {m['macro_f1']:.4f}; confusion {m['confusion_matrix']}; written to {out}")


def summarise_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders of `spinemet train`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One Markdown table over several training runs (e.g. five seeds).

    Accuracy with its interval, macro F1, AUC, the extra cohort's accuracy; mean and SD per
    model.
    """
    import numpy as np

    from .cli import console
    from ..simulations.external import summarise_runs

    unfinished = [r for r in runs if not (r / "metrics.json").is_file()]
    if unfinished:
        console.print(f"[red]error:[/red] no metrics.json in {', '.join(map(str, unfinished))}: "
                      "not a finished `spinemet train` run folder")
        raise typer.Exit(2)
    rows = summarise_runs(runs)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"   # noqa: E731
    print("| model | seed | test accuracy % (95 % CI) | macro F1 | AUC | extra cohort accuracy % "
          "(95 % CI, n) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ci = f" ({pct(r['ci95'][0])}-{pct(r['ci95'][1])})" if r["ci95"] else ""
        eci = (f" ({pct(r['extra_ci95'][0])}-{pct(r['extra_ci95'][1])}, {r['extra_n']})"
               if r["extra_ci95"] else "")
        print(f"| {r['model']} | {r['seed']} | {pct(r['accuracy'])}{ci} | {r['macro_f1']:.4f} | "
              f"{r['auc_macro']:.4f} | {pct(r['extra_accuracy'])}{eci} |")
    for model in dict.fromkeys(r["model"] for r in rows):
        acc = [r["accuracy"] for r in rows if r["model"] == model]
        ext = [r["extra_accuracy"] for r in rows if r["model"] == model
               and r["extra_accuracy"] is not None]
        line = f"| {model} | mean +- SD over {len(acc)} | {pct(np.mean(acc))} +- {pct(np.std(acc, ddof=1) if len(acc) > 1 else 0)} | | |"
        if ext:
            line += f" {pct(np.mean(ext))} +- {pct(np.std(ext, ddof=1) if len(ext) > 1 else 0)} |"
        else:
            line += " - |"
        print(line)
