"""``flower-server``: the coordinator of a SpineMet-FL federation.

Starts a Flower SuperLink (TLS, SuperNode authentication, persistent database in RUN),
enrols exactly the site keys of the certs folder, publishes the Fleet API alone on
``--host:--port``, runs the SpineMet ServerApp until it ends, and stops everything it
started. Exit status: 0 when the run completed, 1 when it failed, 2 on bad input,
130 on Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from .deployment import Deployment, DeploymentError, DeploymentOptions
from .settings import Settings

console = Console(stderr=True)
DEFAULTS = Settings()

HELP = (
    "The coordinator of a SpineMet-FL federation.\n\n"
    "Starts a Flower SuperLink on loopback (TLS, SuperNode authentication, a persistent "
    "database in RUN), enrols exactly the site keys of --certs, publishes the Fleet API "
    "alone on --host:--port, runs the SpineMet ServerApp until it ends, and stops "
    "everything it started (also on Ctrl-C).\n\n"
    "RUN gets metrics.json, report.md, model.pt (for `spinemet predict`), rounds.jsonl, "
    "accuracy_per_round.png, confusion_matrix.png, checkpoints/ and the logs.\n\n"
    "Exit status: 0 when the run completed, 1 when it failed, 2 on bad input, 130 when "
    "interrupted.")

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs of the run config, typed by :class:`Settings`."""
    out = {}
    known = DEFAULTS.run_config()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise typer.BadParameter(f"{pair!r}: expected KEY=VALUE with KEY one of "
                                     f"{', '.join(sorted(known))}", param_hint="--set")
        out[key] = value.strip().strip('"')
    return out


@app.command(help=HELP)
def serve(
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run folder (outputs, checkpoints, the SuperLink's database and "
                            "logs).")] = None,
    certs: Annotated[Optional[Path], typer.Option(
        help="The coordinator folder of `spinemet certs init` (server.crt, server.key, "
             "ca.crt, enrolled site keys).")] = None,
    host: Annotated[str, typer.Option(help="Address the Fleet API is published on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port the Fleet API is published on.")] = 9092,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = DEFAULTS.num_rounds,
    local_epochs: Annotated[int, typer.Option(
        help="Local epochs per round (rounds x local epochs = the centralized epoch "
             "count).")] = DEFAULTS.local_epochs,
    batch_size: Annotated[int, typer.Option(
        help="The sites' batch size (0: the model's centralized batch). 100 rounds x 1 local "
             "epoch at batch 8 came closest to centralized training in simulation "
             "(docs/simulation.md).")] = DEFAULTS.batch_size,
    model: Annotated[str, typer.Option(help="paper or resnet-gn.")] = DEFAULTS.model,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox, fedavgm (server momentum) or fedadam.")] = DEFAULTS.strategy,
    min_sites: Annotated[int, typer.Option(
        help="Sites that must join before training starts (and reply in each "
             "round).")] = DEFAULTS.min_sites,
    wait_for_sites: Annotated[float, typer.Option(
        help="Seconds to wait for --min-sites before failing.")] = DEFAULTS.wait_for_sites,
    round_timeout: Annotated[float, typer.Option(
        help="Seconds a round waits for replies.")] = DEFAULTS.round_timeout,
    seed: Annotated[int, typer.Option(help="Seed of weights, sampling and local "
                                           "training.")] = DEFAULTS.seed,
    test_data: Annotated[Optional[Path], typer.Option(
        help="A labelled DICOM folder the coordinator owns, scored each round "
             "(server-side evaluation).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue the run in this folder from its last checkpoint (same options).")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="No TLS and no site authentication: anyone who reaches the port "
                           "can join. For a closed test network only.")] = False,
    set_: Annotated[list[str], typer.Option(
        "--set", help="Any other run-config key, KEY=VALUE (repeatable).")] = [],
    threads: Annotated[Optional[int], typer.Option(
        help="Threads per process for the ServerApp (default: all cores).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if resume is not None:
        options = _resume_options(resume)
    else:
        if out is None:
            raise typer.BadParameter("give --out RUN (or --resume RUN)", param_hint="--out")
        held = existing_run(out)
        if held:
            raise typer.BadParameter(f"{out} already holds a run ({held}): continue it with "
                                     f"--resume {out}, or give another --out (nothing in it "
                                     "was changed)", param_hint="--out")
        if certs is None and not insecure:
            raise typer.BadParameter("give --certs CERTS/coordinator, or --insecure for a "
                                     "closed test network", param_hint="--certs")
        run_config = {"num-rounds": rounds, "local-epochs": local_epochs,
                      "batch-size": batch_size, "model": model,
                      "strategy": strategy, "min-sites": min_sites,
                      "wait-for-sites": wait_for_sites, "round-timeout": round_timeout,
                      "seed": seed, **_overrides(set_)}
        try:
            Settings.from_run_config({**run_config, "out-dir": str(out)})
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        options = DeploymentOptions(str(out.resolve()), str(certs.resolve()) if certs else None,
                                    host, port, run_config, threads)
        if test_data is not None:
            options.run_config["test-cache"] = _prepare_test_data(test_data, out)
    if options.certs is None:
        console.print("[bold red]WARNING: --insecure: no TLS and no site authentication. "
                      "Anyone who reaches this port can join the federation and read the "
                      "model. Use only on a closed test network.[/]")
    sys.exit(_run(options))


# What a run leaves once it was started (a start that failed before leaves only superlink/).
RUN_MARKERS = ("deployment.json", "status.json", "rounds.jsonl", "checkpoints")


def existing_run(out: Path) -> str:
    """What in ``out`` shows an earlier run ('' when none): a new run there would append its
    rounds to the old ``rounds.jsonl`` and share the old SuperLink database."""
    found = [m for m in RUN_MARKERS if (out / m).exists()]
    if not found:
        return ""
    try:
        status = json.loads((out / "status.json").read_text())
        return f"{status.get('state', 'unknown')} at round {status.get('round', '?')}"
    except (OSError, ValueError):
        return ", ".join(found)


def _resume_options(run: Path) -> DeploymentOptions:
    options = DeploymentOptions.load(run / "deployment.json")
    # a run started before --batch-size existed trained at the model's batch (0), not at
    # today's default
    options.run_config = {"batch-size": 0, **options.run_config, "resume": True}
    return options


def _prepare_test_data(data: Path, out: Path) -> str:
    from ..common.cli import labels_or_exit
    from ..common.preprocess.runner import preprocess

    labels = data / "labels.csv"
    rows = labels_or_exit(labels) if labels.is_file() else None
    cache = (out / "test-cache").resolve()
    summary = preprocess(data, cache, rows)
    console.print(f"coordinator's held-out set: {summary.studies} studies "
                  f"({len(summary.failed)} failed) in {cache}")
    return str(cache)


def _run(options: DeploymentOptions) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rounds = int(options.run_config.get("num-rounds", DEFAULTS.num_rounds))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, refresh_per_second=2,
                   disable=not console.is_terminal)
    task = bar.add_task("federated rounds", total=rounds)

    def on_round(row: dict) -> None:
        if row.get("round") is None:
            console.print(f"final: round {row['evaluated_round']} model scored")
            return
        acc = row.get("test_accuracy")
        console.print(f"round {row['round']}/{rounds}: {row['aggregated']} sites "
                      f"({row['silent']} silent, {len(row['excluded'])} excluded), train loss "
                      f"{row['train_loss']:.4f}; round {row['evaluated_round']} model: pooled "
                      f"test accuracy {'n/a' if acc is None else f'{acc:.4f}'} "
                      f"({row['seconds']:.1f} s)")
        bar.update(task, completed=row["round"])

    def on_term(*_):
        raise KeyboardInterrupt

    deployment = Deployment(options, on_round)
    signal.signal(signal.SIGTERM, on_term)
    try:
        deployment.start()
        first = not (Path(options.out) / "deployment.json").exists()
        if first:
            options.save(Path(options.out) / "deployment.json")
        deployment.submit()
        with bar:
            status = deployment.wait()
        console.print(f"[green]run completed:[/] {status.get('message')} -> {options.out}")
        return 0
    except DeploymentError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted: stopping the run and the SuperLink")
        return 130
    finally:
        deployment.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
