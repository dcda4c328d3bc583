"""The ``spinemet`` command: one entry point, a subcommand per job."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from . import __version__
from .cohort.spec import DEFAULT_DIFFICULTY

app = typer.Typer(
    name="spinemet",
    help="SpineMet-FL: federated spinal-metastasis classification on spine MRI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,   # locals may hold paths or header values
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"spinemet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version,
                                                    is_eager=True, help="Print the version.")] = None,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("httpx").setLevel(logging.WARNING)   # one line per Control API call


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    refresh_per_second=2,   # the workers need the cores more than the bar
                    disable=not console.is_terminal and os.environ.get("SPINEMET_PROGRESS") != "1")


def labels_or_exit(path: Path) -> list[dict]:
    """The rows of a labels CSV, or a clear error naming the file and exit code 2."""
    from .cohort.writer import read_labels

    try:
        return read_labels(path)
    except (OSError, KeyError, ValueError) as exc:
        console.print(f"[red]error:[/red] cannot read labels {path}: {exc}. Expected a CSV with "
                      "columns patient_id, study_uid, label, label_name, site")
        raise typer.Exit(2)


def stage_reporter(bar: Progress):
    """A ``progress(stage, done, total)`` callback: one bar per stage."""
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return report


@app.command()
def cohort(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the cohort into.")],
    patients: Annotated[int, typer.Option(help="Number of patients (classes in the paper's "
                                                "305:320:316 proportions).")] = 941,
    sites: Annotated[int, typer.Option(help="Number of hospitals (scanner profiles cycle).")] = 5,
    seed: Annotated[int, typer.Option(help="Cohort seed: same seed, same files.")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes \\[default: all "
                                                         "cores].")] = None,
    difficulty: Annotated[float, typer.Option(help="Image difficulty 0..1 (lesion size and "
                                                    "conspicuity, mimics); the default is "
                                                    "the calibrated one.")] = DEFAULT_DIFFICULTY,
    preview: Annotated[bool, typer.Option("--preview/--no-preview",
                                          help="Also write montage PNGs to OUT/preview.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace a cohort made with other "
                                                  "settings.")] = False,
) -> None:
    """Write a synthetic spine-MRI cohort as DICOM, with labels and ground truth.

    Re-running with the same settings resumes: finished patients are kept.
    """
    from .cohort.spec import CohortSpec
    from .cohort.writer import CohortError, write_cohort

    try:
        spec = CohortSpec(patients=patients, sites=sites, seed=seed, difficulty=difficulty)
    except ValueError as exc:
        raise typer.BadParameter(str(exc))
    with _progress() as bar:
        task = bar.add_task("synthesising patients", total=spec.patients)
        try:
            summary = write_cohort(spec, out, workers=workers, overwrite=overwrite,
                                   progress=lambda d, t: bar.update(task, completed=d, total=t))
        except CohortError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2)
    counts = spec.class_counts()
    table = Table(title=f"cohort {out}", show_header=False)
    table.add_row("patients", f"{spec.patients} (normal {counts[0]}, mild {counts[1]}, "
                              f"apparent {counts[2]})")
    table.add_row("sites", str(spec.sites))
    table.add_row("written / kept from an earlier run", f"{summary.written} / {summary.skipped}")
    if summary.written:
        table.add_row("time", f"{summary.seconds:.1f} s ({summary.written / summary.seconds:.1f} "
                              "patients/s)")
        table.add_row("DICOM per patient", f"{summary.bytes / summary.written / 1e6:.2f} MB")
    table.add_row("labels", str(out / "labels.csv"))
    console.print(table)
    if preview:
        from .cohort.preview import write_montages
        paths = write_montages(out, out / "preview")
        console.print(f"previews: {len(paths)} PNGs in {out / 'preview'}")
    if summary.failed:
        for pid, why in summary.failed:
            console.print(f"[red]failed[/red] {pid}: {why}")
        console.print(f"[red]{len(summary.failed)} patients failed[/red]; re-run the same "
                      "command to retry them (finished patients are kept)")
        raise typer.Exit(1)


from .cli_preprocess import preprocess_command  # noqa: E402

app.command("preprocess")(preprocess_command)


@app.command()
def preview(
    cohort_dir: Annotated[Path, typer.Argument(help="A cohort folder (with labels.csv).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.")],
    real: Annotated[Optional[list[Path]], typer.Option(
        help="Real DICOM slices or series folders to show beside the synthetic ones.")] = None,
) -> None:
    """Montages per class and sequence; with --real, a synthetic-vs-real comparison."""
    from .cohort.preview import write_comparison, write_montages

    if not (cohort_dir / "labels.csv").exists():
        console.print(f"[red]error:[/red] {cohort_dir / 'labels.csv'} not found: point at a "
                      "folder written by `spinemet cohort`")
        raise typer.Exit(2)
    paths = write_montages(cohort_dir, out)
    if real:
        paths.append(write_comparison(cohort_dir, real, out / "synthetic_vs_real.png"))
    for p in paths:
        print(p)


from .cli_dicom import inspect_command, validate_command  # noqa: E402  (imports typer only)

app.command("inspect")(inspect_command)
app.command("validate")(validate_command)

from .cli_train import (evaluate_command, models_command, predict_command,  # noqa: E402
                        summarise_command, train_command)

app.command("models")(models_command)
app.command("train")(train_command)
app.command("predict")(predict_command)
app.command("evaluate")(evaluate_command)
app.command("summarise")(summarise_command)

from .cli_simulate import simulate_command  # noqa: E402

app.command("simulate")(simulate_command)

from .cli_certs import certs_app  # noqa: E402

app.add_typer(certs_app, name="certs")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
