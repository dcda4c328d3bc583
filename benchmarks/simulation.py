"""Simulation mode: federated vs centralized wall time at equal compute, and scale.

On the default cohort's cache (written and preprocessed first when missing):

* equal compute: ``spinemet train`` for R x E epochs against a simulation of R rounds x E
  local epochs over 5 IID virtual hospitals, at ``spinemet simulate``'s defaults (100 x 1,
  the hospitals' batch 8) (target: federated <= 1.5 x centralized). The pair runs
  ``pairs`` times, centralized and federated alternately, and the verdict is the median of
  the pairs' ratios: a single centralized run's time spreads by a third between runs on a
  shared 2-core machine, more than the margin the target leaves. The federated time is
  split into Flower's fixed start-up (SuperLink, simulation process, Ray, the hospitals
  loading their tensors) and the rounds;
* scale: 5, 20 and 100 virtual hospitals, a few rounds of one local epoch each, every
  hospital in every round: wall time and peak memory of every process of the simulation
  (the SuperLink, ``flwr-simulation`` and Ray's workers; proportional set size, so shared
  pages count once).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path


def _pss_mib(tag: str) -> float:
    """Summed PSS of every process whose environment carries ``tag`` (Linux /proc)."""
    total = 0
    needle = f"SPINEMET_BENCH_TAG={tag}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle not in (proc / "environ").read_bytes():
                continue
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class PeakMemory:
    def __init__(self, tag: str, every: float = 0.5):
        self.tag, self.every, self.peak = tag, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _pss_mib(self.tag))
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _ensure_data(data: Path, cache: Path):
    from spinemet.common.cohort.spec import CohortSpec
    from spinemet.common.cohort.writer import read_labels
    from spinemet.common.dataset import SpineDataset
    from spinemet.common.preprocess.pipeline import default_pipeline
    from spinemet.simulations.centralized import prepare_data
    from spinemet.simulations.reproduction import ensure_cohort

    if not data.exists():
        ensure_cohort(data, CohortSpec(), None, None, "default cohort")
    summary = prepare_data(data, cache, read_labels(data / "labels.csv"), None,
                           default_pipeline())
    entries = SpineDataset(cache, split="train", pipeline_hash=summary.pipeline_hash).entries
    return [{"patient_id": e["patient_id"], "label": e["label"], "site": e["site"]}
            for e in entries]


def _federated(root: Path, cache: Path, rows: list[dict], hospitals: int, rounds: int,
               local_epochs: int, batch_size: int) -> tuple[float, float, float]:
    """(wall seconds, seconds in rounds, peak MiB) of one simulation."""
    from spinemet.simulations.engine import SimulationRun, ray_cpus, run_simulation
    from spinemet.simulations.partition import (parse_partition, partition_patients,
                                                write_partition)

    spec = parse_partition("iid")
    part = partition_patients(rows, hospitals, spec, seed=0)
    root.mkdir(parents=True, exist_ok=True)
    write_partition(root / "partition.json", part, rows, spec, 0)
    tag = uuid.uuid4().hex
    run_config = {"num-rounds": rounds, "local-epochs": local_epochs, "min-sites": hospitals,
                  "batch-size": batch_size,
                  "sim-partition": str(root.resolve() / "partition.json"),
                  "sim-cache": str(cache.resolve()),   # Flower's processes run elsewhere
                  "test-cache": str(cache.resolve()), "test-split": "test"}
    with PeakMemory(tag) as mem:
        status = run_simulation(SimulationRun(out=root / "run", run_config=run_config,
                                              hospitals=hospitals, cpus=ray_cpus(hospitals),
                                              env={"SPINEMET_BENCH_TAG": tag}))
    rows_out = [json.loads(x) for x in (root / "run" / "rounds.jsonl").read_text().splitlines()
                if x.strip()]
    in_rounds = sum(r.get("seconds", 0.0) for r in rows_out if r.get("round"))
    return status["wall_seconds"], in_rounds, mem.peak


def _each(values: list[float], unit: str = " s", fmt: str = ".0f") -> str:
    """One value as is; several as their median and the values."""
    shown = ", ".join(f"{v:{fmt}}" for v in values)
    if len(values) == 1:
        return shown + unit
    return f"{statistics.median(values):{fmt}}{unit} (median of {shown})"


def bench_simulation(data: Path = Path("data/cohort"), cache: Path = Path("data/cache"),
                     rounds: int = 100, local_epochs: int = 1,
                     scales: tuple[int, ...] = (5, 20, 100), scale_rounds: int = 3,
                     pairs: int = 3) -> list[tuple]:
    from spinemet.common.cohort.writer import read_labels
    from spinemet.common.training.protocol import TrainConfig
    from spinemet.simulations.centralized import train_centralized
    from spinemet.simulations.reproduction import Plan

    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, not {pairs}")
    batch = Plan(data=str(data), out="", cache=str(cache)).local_batch_size   # the default rule
    rows = _ensure_data(data, cache)
    with tempfile.TemporaryDirectory(prefix="spinemet-bench-sim-") as tmp:
        root = Path(tmp)
        epochs = rounds * local_epochs
        measured = []       # (centralized s, federated s, federated s in rounds) per pair
        for i in range(pairs):
            t0 = time.monotonic()
            train_centralized(data, cache, root / f"central-{i}",
                              TrainConfig.for_model("paper", epochs=epochs, seed=0),
                              read_labels(data / "labels.csv"))
            central = time.monotonic() - t0
            wall, in_rounds, _ = _federated(root / f"fed-equal-{i}", cache, rows, 5, rounds,
                                            local_epochs, batch(5))
            measured.append((central, wall, in_rounds))
        ratios = [f / c for c, f, _ in measured]
        ratio = statistics.median(ratios)

        out = [
            (f"simulation: centralized, paper, {epochs} epochs ({len(rows)} training "
             "patients)", _each([c for c, _, _ in measured]), "", ""),
            (f"simulation: federated, 5 IID hospitals, {rounds} rounds x {local_epochs} local "
             f"epochs, batch {batch(5)}", _each([f for _, f, _ in measured]), "", ""),
            ("simulation: of which start-up (SuperLink, Ray, loading) and wind-down",
             _each([f - r for _, f, r in measured]), "", ""),
            (f"simulation: federated / centralized wall time at equal compute ({pairs} "
             f"alternating pair{'s' if pairs > 1 else ''})", _each(ratios, "", ".2f"), "<= 1.5",
             f"{ratio / 1.5:.2f}"),
        ]
        for n in scales:
            wall, in_rounds, peak = _federated(root / f"scale-{n}", cache, rows, n,
                                               scale_rounds, 1, batch(n))
            out.append((f"simulation: {n} hospitals, {scale_rounds} rounds x 1 epoch, batch "
                        f"{batch(n)} (wall / in rounds)", f"{wall:.0f} s / {in_rounds:.0f} s",
                        "", ""))
            out.append((f"simulation: {n} hospitals, peak memory (PSS, all processes)",
                        f"{peak:.0f} MiB", "", ""))
        return out
