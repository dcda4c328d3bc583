"""``spinemet simulate``: centralized vs federated on virtual hospitals (Flower's simulation
engine), per seed, with the gap and its paired interval."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer


def simulate_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="Cohort folder; the default "
                                                              "941-patient cohort is written "
                                                              "there first when it does not "
                                                              "exist.")] = Path("data/cohort"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (reproduction.json, "
                                                            "report.md, seed-S/...).")]
    = Path("runs/simulation"),
    labels: Annotated[Optional[Path], typer.Option(help="labels.csv \\[default: "
                                                        "DATA/labels.csv].")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Preprocessing cache \\[default: "
                                                       "DATA/../cache].")] = None,
    sites: Annotated[int, typer.Option(help="Virtual hospitals (ignored by --partition "
                                            "site: the cohort's own sites).")] = 5,
    partition: Annotated[str, typer.Option(help="iid | dirichlet:ALPHA | size:W1,W2,... | "
                                                "size:SIGMA | site")] = "iid",
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 100,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round; the centralized "
                                                   "baseline trains rounds x local epochs.")] = 1,
    strategy: Annotated[str, typer.Option(help="fedavg | fedprox | fedavgm | fedadam")]
    = "fedavg",
    server_momentum: Annotated[float, typer.Option(help="FedAvgM's server momentum.")] = 0.9,
    server_lr: Annotated[float, typer.Option(help="FedAvgM's server learning rate / "
                                                  "FedAdam's eta; 0 = Flower's default "
                                                  "(1.0 / 0.1).")] = 0.0,
    proximal_mu: Annotated[float, typer.Option(help="FedProx's proximal term.")] = 0.01,
    client_momentum: Annotated[str, typer.Option(
        help="carry: the hospitals' SGD momentum runs on across rounds (the coordinator "
             "averages the buffers with the weights), as in the centralized run; restart: "
             "every round starts it from zero (docs/simulation.md).")] = "carry",
    model: Annotated[str, typer.Option(help="Model name (`spinemet models`).")] = "paper",
    seeds: Annotated[str, typer.Option(help="Training/partition seeds, e.g. 0 or 0,1,2,3,4.")]
    = "0",
    central_epochs: Annotated[int, typer.Option(help="Centralized epochs; 0 = rounds x local "
                                                     "epochs (equal compute). Another value "
                                                     "is reported as NOT equal compute.")] = 0,
    local_batch: Annotated[str, typer.Option(
        "--local-batch-size", help="Batch size at each hospital: a number; scaled = the "
                                   "centralized batch / hospitals per round (as many "
                                   "sequential steps as centralized training); central = the "
                                   "centralized batch. The default 8 was chosen on the pooled "
                                   "validation loss over 5 seeds (docs/simulation.md).")] = "8",
    fraction: Annotated[float, typer.Option(help="Fraction of hospitals sampled per round "
                                                 "(< 1 is no longer equal compute).")] = 1.0,
    extra_patients: Annotated[int, typer.Option(help="Extra synthetic test cohort (another "
                                                     "seed), made and cached once; 0 = none. "
                                                     "600 cost about 6 min on 2 cores; 3000 "
                                                     "about 25.")]
    = 600,
    extra_seed: Annotated[int, typer.Option(help="Seed of the extra test cohort.")] = 1000,
    extra_data: Annotated[Optional[Path], typer.Option(help="Where the extra cohort lives "
                                                            "\\[default: DATA/../extra-N-sSEED]."
                                                       )] = None,
    cpus_per_client: Annotated[int, typer.Option(help="Ray CPUs per virtual hospital's "
                                                      "ClientApp (1: one per core, and one "
                                                      "more when a round's hospitals leave a "
                                                      "core idle).")] = 1,
    workers: Annotated[Optional[int], typer.Option(help="Preprocessing / cohort processes "
                                                        "\\[default: all cores].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Delete a reproduction made with other "
                                                 "settings in --out.")] = False,
) -> None:
    """Centralized vs federated at equal compute on the same patients, per seed.

    Makes the cohort when DATA does not exist, preprocesses (cached), partitions the
    training patients over virtual hospitals, trains the centralized baseline and the
    federated model (Flower's simulation engine on Ray, the project's own ServerApp and
    ClientApp), scores both on the common test split and the extra test cohort, and writes
    RUN/reproduction.json and RUN/report.md. Re-running with the same settings keeps what
    is finished. Set RAY_ADDRESS to run the virtual hospitals on an existing Ray cluster.
    """
    from rich.table import Table

    from ..simulations.engine import SimulationError
    from ..simulations.partition import parse_partition
    from ..simulations.reproduction import Plan, PlanMismatch, run_reproduction
    from .cli import _progress, console, stage_reporter

    try:
        seed_list = tuple(int(s) for s in seeds.replace(" ", ",").split(",") if s)
    except ValueError:
        raise typer.BadParameter(f"{seeds!r} is not a comma-separated list of integers",
                                 param_hint="--seeds")
    try:
        parse_partition(partition)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--partition")
    if rounds < 1 or local_epochs < 1 or sites < 1 or central_epochs < 0 or \
            not 0 < fraction <= 1:
        raise typer.BadParameter("rounds, local epochs and sites must be >= 1, central epochs "
                                 ">= 0, fraction in (0, 1]")
    try:
        plan = Plan(data=str(data), out=str(out.resolve()),
                    cache=str(cache or data.resolve().parent / "cache"),
                    labels=str(labels) if labels else None,
                    sites=sites, partition=partition, rounds=rounds, local_epochs=local_epochs,
                    strategy=strategy, server_momentum=server_momentum, server_lr=server_lr,
                    proximal_mu=proximal_mu, client_momentum=client_momentum, model=model,
                    seeds=seed_list or (0,),
                    fraction=fraction,
                    extra_patients=extra_patients, extra_seed=extra_seed,
                    extra_data=str(extra_data) if extra_data else "",
                    cpus_per_client=cpus_per_client, workers=workers,
                    central_epochs_override=central_epochs, local_batch=local_batch)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--local-batch-size")
    if overwrite and (out / "plan.json").exists():
        shutil.rmtree(out)
    with _progress() as bar:
        try:
            summary = run_reproduction(plan, stage_reporter(bar))
        except (PlanMismatch, FileNotFoundError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2)
        except SimulationError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1)
    table = Table(title=f"{model}, {strategy}, {summary['sites']} hospitals, {partition}; "
                        f"seeds {list(summary['seeds'])}")
    for col in ("", "centralized", "federated", "gap (points, paired 95 % CI)"):
        table.add_column(col)
    names = {"test": "test split", "extra": "extra cohort"}
    for part, gap in summary["gap_pp"].items():
        lo, hi = summary["gap_ci_pp"][part]
        c, f = summary["central"][part]["accuracy"], summary["federated"][part]["accuracy"]
        table.add_row(f"accuracy %, {names[part]} (n = {summary['n_patients'][part]})",
                      f"{100 * c['mean']:.2f} +- {100 * c['sd']:.2f}",
                      f"{100 * f['mean']:.2f} +- {100 * f['sd']:.2f}",
                      f"{gap:+.2f} ({lo:+.2f} to {hi:+.2f})")
    table.add_row("wall seconds per seed", f"{summary['central']['wall_seconds']['mean']:.0f}",
                  f"{summary['federated']['wall_seconds']['mean']:.0f}",
                  f"ratio {summary['wall_ratio']:.2f}")
    table.add_row("paper (Wang et al. 2023)", "96.45", "", "")
    console.print(table)
    console.print(f"report: {out / 'report.md'}")
