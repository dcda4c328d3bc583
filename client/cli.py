"""``spinemet-client``: a hospital joins a SpineMet-FL federation.

1. Checks the site's certs folder (refuses one that holds the CA key or another key).
2. Validates the site's DICOM folder and labels (the report of ``spinemet validate``) and
   refuses to join when no study is trainable.
3. Preprocesses the studies into the site's cache (a second start costs seconds).
4. Checks the coordinator's TLS certificate against the site's CA.
5. Starts a Flower SuperNode with node config {site, data folder, cache} and the site key,
   and stays in the foreground: a network blip is retried, a refusal (key not enrolled,
   untrusted certificate) ends it at once with the reason. Exit status: 0 after Ctrl-C /
   SIGTERM, 2 on bad input or nothing trainable, 3 on a refusal, 1 otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .supernode import (SuperNodeSpec, final_refusal, preflight, start_supernode,
                        start_worker)

console = Console(stderr=True)
HELP = (
    "A hospital joins a SpineMet-FL federation.\n\n"
    "Checks the site's certs folder (refuses one holding the CA key), validates the DICOM "
    "folder and labels (refuses to join when nothing is trainable), preprocesses the "
    "studies into the site's cache, checks the coordinator's TLS certificate, then runs "
    "the site worker and a Flower SuperNode in the foreground. Only weights, example "
    "counts, losses and confusion counts leave the site.\n\n"
    "A network blip is retried; a refusal (key not enrolled, untrusted certificate) ends "
    "it at once with the reason. Exit status: 0 after Ctrl-C, 2 on bad input or nothing "
    "trainable, 3 when the coordinator refused the site, 1 otherwise.")

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
log = logging.getLogger("spinemet.client")


def _default_cache(site: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "spinemet" / site


def _fail(code: int, message: str) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


@app.command(help=HELP)
def join(
    site: Annotated[str, typer.Option(help="This hospital's name (as enrolled).")],
    data: Annotated[Path, typer.Option(help="The site's DICOM folder (any layout).")],
    server: Annotated[str, typer.Option(help="The coordinator's Fleet API, HOST:PORT.")],
    certs: Annotated[Optional[Path], typer.Option(
        help="This site's folder from `spinemet certs` (site_auth_key, ca.crt).")] = None,
    labels: Annotated[Optional[Path], typer.Option(
        help="Labels CSV \\[default: DATA/labels.csv].")] = None,
    cache: Annotated[Optional[Path], typer.Option(
        help="Preprocessing cache and SuperNode state "
             "\\[default: ~/.cache/spinemet/SITE].")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Preprocessing processes \\[default: all cores].")] = None,
    runtime_port: Annotated[int, typer.Option(
        help="The SuperNode's local port (one per SuperNode on a host).")] = 9094,
    max_wait_time: Annotated[Optional[float], typer.Option(
        help="Give up after this many seconds without the coordinator "
             "\\[default: keep trying].")] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="Torch threads for local training \\[default: all cores].")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="No TLS, no site key: only against a coordinator started with "
                           "--insecure on a closed test network.")] = False,
) -> None:
    from ..common.certs import PkiError, check_site_folder, validate_site_name

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        validate_site_name(site)
    except PkiError as exc:
        _fail(2, str(exc))
    if certs is None and not insecure:
        _fail(2, "give --certs with this site's folder from `spinemet certs` "
                 "(or --insecure for a closed test network)")
    if certs is not None:
        try:
            check_site_folder(certs)
        except PkiError as exc:
            _fail(2, f"--certs {certs}: {exc}")
    else:
        console.print("[bold red]WARNING: --insecure: the model and this site's updates "
                      "travel unencrypted and the coordinator cannot tell this site "
                      "from anyone else.[/]")
    if not data.is_dir():
        _fail(2, f"--data {data} is not a folder")
    labels = labels or data / "labels.csv"
    cache = (cache or _default_cache(site)).resolve()
    _prepare(data, labels, cache, workers)

    ca = certs / "ca.crt" if certs is not None else None
    refusal = preflight(server, ca)
    if refusal:
        _fail(3, f"the coordinator refused this site: {refusal}")
    spec = SuperNodeSpec(site, server, data, cache, certs, runtime_port, max_wait_time,
                         threads)
    raise typer.Exit(_supervise(spec, cache / "supernode.log"))


def _prepare(data: Path, labels: Path, cache: Path, workers: int | None) -> None:
    """Validation report, then preprocessing; exit 2 when nothing is trainable."""
    from ..common.cli import labels_or_exit, stage_reporter, _progress
    from ..common.cli_dicom import _print_report, _scan
    from ..common.dicom.validate import validate_site
    from ..common.preprocess.runner import preprocess

    report = validate_site(_scan([data], workers, quiet=False), data, labels)
    if not report.ok:
        _print_report(report, 20)
        _fail(2, f"{data}: no trainable study (labelled 0/1/2 with sagittal T1, T2 and "
                 "STIR); fix the data or labels above, then start again")
    console.print(f"{report.trainable} trainable studies "
                  f"({', '.join(f'{k} {v}' for k, v in report.class_counts.items())}); "
                  f"{len(report.missing_sequences)} missing a sequence, "
                  f"{sum(report.rejected_by_reason.values())} files rejected")
    rows = labels_or_exit(labels)
    with _progress() as bar:
        summary = preprocess(data, cache, rows, workers=workers, progress=stage_reporter(bar))
    if summary.failed:
        console.print(f"[yellow]{len(summary.failed)} studies failed preprocessing and are "
                      "left out[/] (`spinemet preprocess` lists why)")


def _supervise(spec: SuperNodeSpec, log_path: Path, restart_delays=(2, 5, 10, 30)) -> int:
    """Run the site worker and the SuperNode in the foreground; start them again when they
    end without a refusal (a coordinator that came back with a new database makes Flower's
    SuperNode exit)."""
    def stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    restarts, children = 0, []
    try:
        while True:
            worker = start_worker(spec, log_path.with_name("worker.log"))
            start = log_path.stat().st_size if log_path.exists() else 0   # earlier lines
            node = start_supernode(spec, log_path)
            children = [node, worker]
            console.print(f"SuperNode started for site {spec.site} -> {spec.server} "
                          f"(log {log_path})")
            status = _follow(node, worker, start)
            for child in children:
                child.stop()
            if isinstance(status, Exception):
                console.print(f"[red]error: the coordinator refused this site:[/] {status}")
                return 3
            delay = restart_delays[min(restarts, len(restart_delays) - 1)]
            restarts += 1
            console.print(f"[yellow]{status}; starting again in {delay} s[/] (log {log_path})")
            time.sleep(delay)
    except KeyboardInterrupt:
        console.print("stopping the SuperNode")
        for child in children:
            child.stop()
        return 0


def _follow(node, worker, start: int):
    """Mirror the SuperNode's log until it is refused (the Refusal) or a process ends."""
    shown = 0
    while True:
        text = node.text()[start:]
        if len(text) > shown:
            sys.stderr.write(text[shown:])
            sys.stderr.flush()
            shown = len(text)
        refusal = final_refusal(text)
        if refusal:
            return refusal
        if not node.alive():
            return f"the SuperNode ended (status {node.proc.returncode})"
        if not worker.alive():
            return f"the site worker ended (status {worker.proc.returncode})"
        time.sleep(0.5)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
