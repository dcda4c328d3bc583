"""``spinemet inspect`` and ``spinemet validate``: what a site's DICOM holds, and whether it is
ready for training. Nothing here prints a value read from inside a file other than UIDs,
patient IDs (local only), geometry and acquisition numbers: no names, no descriptions."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer


def _stdout_console():
    from rich.console import Console
    c = Console(file=sys.stdout)
    return c if c.is_terminal else Console(file=sys.stdout, width=160)


def _scan(paths: list[Path], workers: Optional[int], quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .dicom import scan

    err = Console(stderr=True)
    show = not quiet and (err.is_terminal or os.environ.get("SPINEMET_PROGRESS") == "1")
    with Progress(TextColumn("reading DICOM headers"), BarColumn(), MofNCompleteColumn(),
                  console=err, disable=not show, transient=True) as bar:
        task = bar.add_task("scan", total=None)
        return scan(paths, workers=workers,
                    progress=lambda d, t: bar.update(task, completed=d, total=t))


def _fmt_spacing(sp) -> str:
    return " x ".join(f"{v:.3g}" for v in sp)


def _print_rejected(console, result, limit: int) -> None:
    from rich.table import Table

    if not result.rejected:
        return
    t = Table(title=f"rejected files ({len(result.rejected)})", title_justify="left")
    t.add_column("file", overflow="fold")
    t.add_column("reason")
    t.add_column("detail", overflow="fold")
    for r in result.rejected[:limit]:
        t.add_row(str(r.path), r.reason, r.detail)
    console.print(t)
    if len(result.rejected) > limit:
        console.print(f"... and {len(result.rejected) - limit} more (use --json for all); "
                      "by reason: " + ", ".join(f"{k} {v}" for k, v in
                                                result.rejected_by_reason().items()))


def inspect_command(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders, any layout.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Header-reading processes "
                                                        "\\[default: all cores].")] = None,
    limit: Annotated[int, typer.Option(help="Rejected files listed in the table.")] = 50,
) -> None:
    """List the studies and series found under PATHS and every file that cannot be used.

    Series: sequence (T1/T2/STIR/other), orientation, patient position, slices, shape,
    spacing. Exit 0 when a usable series was found, 2 when none was.
    """
    result = _scan(paths, workers, as_json)
    usable = bool(result.series)
    if as_json:
        print(json.dumps({"ok": usable, **result.to_dict()}, indent=2))
        raise typer.Exit(0 if usable else 2)
    from rich.table import Table

    console = _stdout_console()
    for st in result.studies:
        t = Table(title=f"study {st.study_uid}  (patient {st.patient_id or '?'})",
                  title_justify="left")
        for col in ("sequence", "orientation", "position", "slices", "shape (k,r,c)",
                    "spacing mm", "syntax", "folder"):
            t.add_column(col, overflow="fold" if col == "folder" else "ellipsis")
        for s in st.series:
            t.add_row(s.sequence, s.orientation, s.patient_position or "?", str(s.shape[0]),
                      "x".join(map(str, s.shape)), _fmt_spacing(s.spacing),
                      s.transfer_syntax and _syntax_name(s.transfer_syntax) or "?",
                      str(s.folder()) + (" (multi-frame)" if s.multiframe else ""))
        console.print(t)
        if st.missing():
            console.print(f"  no sagittal {', '.join(st.missing())}")
    _print_rejected(console, result, limit)
    console.print(f"{len(result.studies)} studies, {len(result.series)} series, "
                  f"{len(result.rejected)} files rejected, {len(result.ignored)} non-DICOM "
                  f"files ignored, {result.files_read} files read")
    if not usable:
        console.print("[red]no usable MR series found[/red]")
        raise typer.Exit(2)


def _syntax_name(uid: str) -> str:
    from pydicom.uid import UID
    u = UID(uid)
    return (u.keyword or u.name) if u.is_transfer_syntax else "unknown"


def validate_command(
    data: Annotated[Path, typer.Option("--data", help="The site's DICOM folder.")],
    labels: Annotated[Optional[Path], typer.Option(
        "--labels", help="Labels CSV (patient_id, study_uid, label, label_name, site) "
                         "\\[default: DATA/labels.csv].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Header-reading processes "
                                                        "\\[default: all cores].")] = None,
    limit: Annotated[int, typer.Option(help="Rows listed per problem table.")] = 20,
) -> None:
    """A site's readiness report: studies, labels, classes, missing sequences, rejected files.

    Exit 1 when no trainable study remains (labelled 0/1/2 with sagittal T1, T2 and STIR).
    """
    from .dicom.validate import validate_site

    if not data.is_dir():
        print(f"error: --data {data} is not a folder", file=sys.stderr)
        raise typer.Exit(2)
    labels = labels if labels is not None else data / "labels.csv"
    result = _scan([data], workers, as_json)
    rep = validate_site(result, data, labels)
    if as_json:
        print(json.dumps(rep.to_dict(), indent=2))
        raise typer.Exit(0 if rep.ok else 1)
    _print_report(rep, limit)
    if not rep.ok:
        raise typer.Exit(1)


def _print_report(rep, limit: int) -> None:
    from rich.table import Table

    console = _stdout_console()
    t = Table(title=f"site readiness: {rep.data}", show_header=False, title_justify="left")
    t.add_row("labels file", str(rep.labels_file))
    t.add_row("studies found", str(rep.studies_found))
    t.add_row("series found", str(rep.series_found))
    t.add_row("labelled / unlabelled studies", f"{rep.labelled} / {len(rep.unlabelled)}")
    t.add_row("studies missing a sequence", str(len(rep.missing_sequences)))
    t.add_row("label rows naming no study found", str(len(rep.labels_without_study)))
    t.add_row("unknown label values", str(len(rep.unknown_labels)))
    t.add_row("duplicate patients", str(len(rep.duplicate_patients)))
    t.add_row("rejected files", ", ".join(f"{k} {v}" for k, v in
                                          rep.rejected_by_reason.items()) or "0")
    t.add_row("trainable studies", f"[bold]{rep.trainable}[/bold]")
    t.add_row("classes (trainable)", ", ".join(f"{k} {v}" for k, v in rep.class_counts.items()))
    if rep.site_counts:
        t.add_row("sites (trainable)", ", ".join(f"{k} {v}" for k, v in
                                                 rep.site_counts.items()))
    console.print(t)

    def listing(title, cols, rows):
        if not rows:
            return
        tab = Table(title=f"{title} ({len(rows)})", title_justify="left")
        for c in cols:
            tab.add_column(c, overflow="fold")
        for r in rows[:limit]:
            tab.add_row(*[str(x) for x in r])
        console.print(tab)
        if len(rows) > limit:
            console.print(f"... and {len(rows) - limit} more (use --json for all)")

    listing("studies missing a sequence", ("study", "missing"),
            [(k, ", ".join(v)) for k, v in rep.missing_sequences.items()])
    listing("label rows naming no study found", ("row", "patient", "study"),
            [(r["row"], r["patient_id"], r["study_uid"]) for r in rep.labels_without_study])
    listing("unknown label values (expected 0, 1, 2)", ("row", "label"),
            [(r["row"], r["label"]) for r in rep.unknown_labels])
    listing("duplicate patients", ("patient", "why"),
            [(r["patient_id"], r["why"]) for r in rep.duplicate_patients])
    listing("unlabelled studies", ("study",), [(u,) for u in rep.unlabelled])
    listing("rejected files", ("file", "reason", "detail"),
            [(r["path"], r["reason"], r["detail"]) for r in rep.rejected])
    for e in rep.errors:
        console.print(f"[yellow]warning:[/yellow] {e}")
    if rep.ok:
        console.print(f"[green]ready:[/green] {rep.trainable} trainable studies")
    else:
        console.print("[red]not ready:[/red] no trainable study (labelled 0/1/2 with sagittal "
                      "T1, T2 and STIR)")
