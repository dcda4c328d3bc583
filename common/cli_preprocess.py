"""``spinemet preprocess``: a site's DICOM into the cache of fixed-size tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def preprocess_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="Folder of DICOM studies (any "
                                                              "layout).")],
    cache: Annotated[Path, typer.Option("--cache", "-c", help="Cache folder (reused across "
                                                                "runs).")],
    labels: Annotated[Optional[Path], typer.Option(help="labels.csv \\[default: "
                                                        "DATA/labels.csv if present].")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes \\[default: all "
                                                         "cores].")] = None,
    show_pipeline: Annotated[bool, typer.Option("--show-pipeline", help="Print the pipeline's "
                                                "parameters and hash, then exit.")] = False,
) -> None:
    """Run the paper's preprocessing (sec. 2.2) on every study and cache the tensors.

    Studies already in the cache for the same files and pipeline are reused; a study that
    fails is reported and does not stop the others. The index of the run is written to
    CACHE/<pipeline hash>/index.json.
    """
    from rich.table import Table

    from .cli import _progress, console, labels_or_exit, stage_reporter
    from .preprocess.pipeline import default_pipeline
    from .preprocess.runner import preprocess

    pipeline = default_pipeline()
    if show_pipeline:
        print(json.dumps({"hash": pipeline.hash(), **pipeline.params()}, indent=2, default=list))
        raise typer.Exit()
    if not data.is_dir():
        console.print(f"[red]error:[/red] --data {data} is not a folder")
        raise typer.Exit(2)
    labels = labels or (data / "labels.csv" if (data / "labels.csv").exists() else None)
    rows = None
    if labels is not None:
        rows = labels_or_exit(labels)
    with _progress() as bar:
        report = stage_reporter(bar)
        summary = preprocess(data, cache, rows, pipeline, workers, report)
    table = Table(title=f"preprocess {data}", show_header=False)
    table.add_row("studies found", str(summary.studies))
    table.add_row("computed / from cache", f"{summary.computed} / {summary.cached}")
    table.add_row("failed", str(len(summary.failed)))
    table.add_row("unlabelled", str(summary.unlabelled))
    table.add_row("rejected files", str(summary.rejected_files))
    if summary.computed:
        table.add_row("time", f"{summary.seconds:.1f} s")
    table.add_row("tensor shape", "x".join(map(str, pipeline.output_shape)))
    table.add_row("pipeline", summary.pipeline_hash[:16])
    table.add_row("index", str(summary.index))
    console.print(table)
    for uid, why in summary.failed:
        console.print(f"[red]failed[/red] study {uid}: {why}")
    if summary.studies == 0 or len(summary.failed) == summary.studies:
        raise typer.Exit(1)
