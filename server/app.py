"""The SpineMet ServerApp: the coordinator's side of a run, under ``flwr run``,
``flower-server`` and the simulation engine alike.

It reads its settings from the run config (:mod:`.settings`), runs the round loop
(:mod:`.rounds`), and writes the run folder (:mod:`.outputs`). A failure is written to
``RUN/status.json`` and re-raised, so Flower marks the run failed too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .outputs import append_round, write_final, write_status
from .rounds import Coordinator, FederationError
from .settings import Settings

log = logging.getLogger("spinemet.server")

app = ServerApp()


def run_federation(grid: Grid, settings: Settings, **clock) -> dict:
    """The whole run; returns the final metrics."""
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    coordinator = Coordinator(grid, settings, **clock)
    state = coordinator.initial_state()
    write_status(out, "running", state.round, "waiting for sites")
    try:
        if settings.test_cache:
            from .server_eval import load_held_out
            config = coordinator.config
            coordinator.server_test = load_held_out(settings.test_cache,
                                                    coordinator.pipeline_hash,
                                                    settings.test_split, config.split_seed,
                                                    config.test_fraction)
        coordinator.wait_for_sites()
        if not state.global_counts:
            state.global_counts = coordinator.global_counts()
        log.info("global class counts (fit patients): %s", state.global_counts)
        for server_round in range(state.round + 1, settings.num_rounds + 1):
            write_status(out, "running", state.round, f"round {server_round}")
            row = coordinator.train_round(state, server_round)
            state.history.append(row)
            t_checkpoint = coordinator.clock()
            coordinator.checkpoint(state)
            row["seconds_checkpoint"] = coordinator.clock() - t_checkpoint
            append_round(out, row)
            log.info("round %d/%d: %d sites, train loss %.4f; round %d model: val loss %s, "
                     "pooled test accuracy %s (%.1f s)", server_round, settings.num_rounds,
                     row["aggregated"], row["train_loss"], row["evaluated_round"],
                     _fmt(row.get("val_loss")), _fmt(row.get("test_accuracy")), row["seconds"])
        metrics, temperature = coordinator.final_evaluation(state)
        coordinator.checkpoint(state)        # the same round, with the final selection
        append_round(out, state.history[-1])
        write_final(out, settings, coordinator.config, metrics, state.history, state.best,
                    temperature, coordinator.input_shape, coordinator.pipeline_hash,
                    coordinator.pipeline_params)
        write_status(out, "completed", state.round,
                     f"accuracy {metrics['accuracy']:.4f} on {metrics['n_test']} pooled test "
                     f"patients; selected round {state.best['round']}")
        return metrics
    except FederationError as exc:
        write_status(out, "failed", state.round, str(exc))
        log.error("%s", exc)
        raise
    except BaseException as exc:
        write_status(out, "failed", state.round, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        coordinator.close()


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _log_to_console() -> None:
    """SpineMet's INFO lines in the ServerApp's output (Flower streams it to `flwr log`)."""
    logger = logging.getLogger("spinemet")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_to_console()
    try:
        settings = Settings.from_run_config(dict(context.run_config))
    except ValueError as exc:   # say why in RUN/status.json too: the commands read it
        out = str(dict(context.run_config).get("out-dir", "")).strip()
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            write_status(Path(out), "failed", 0, f"invalid run config: {exc}")
        raise
    run_federation(grid, settings)
