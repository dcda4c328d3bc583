"""Measure the project's speed and size targets in one run and print them as a table.

    python -m benchmarks                      # the full default cohort (941 patients) and
                                              # preprocessing of 200 of its studies
    python -m benchmarks --patients 100       # a quicker look (scaled to 941 in the table)
    python -m benchmarks --only preprocess    # one group (cohort, preprocess, training,
                                              # federation, simulation)

Each row gives the measured value, the target, and their ratio (<= 1.0 meets the target).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _tree_bytes(root: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern) if p.is_file())


def bench_cohort(patients: int, workers: int, keep: Path | None) -> list[tuple]:
    from spinemet.common.cohort.spec import CohortSpec
    from spinemet.common.cohort.writer import write_cohort

    out = keep or Path(tempfile.mkdtemp(prefix="spinemet-bench-"))
    if out.exists():
        shutil.rmtree(out)
    spec = CohortSpec(patients=patients)
    t0 = time.perf_counter()
    summary = write_cohort(spec, out, workers=workers)
    wall = time.perf_counter() - t0
    dicom = _tree_bytes(out, "*.dcm")
    truth = _tree_bytes(out / "ground_truth", "*.npz")
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MiB
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if keep is None:
        shutil.rmtree(out)
    if summary.failed:
        raise SystemExit(f"{len(summary.failed)} patients failed: {summary.failed[:3]}")
    scale = 941 / patients
    full_s = wall * scale
    full_gb = (dicom + truth) * scale / 1e9
    return [
        ("cohort: patients", f"{patients}", "", ""),
        ("cohort: worker processes", f"{workers}", "", ""),
        ("cohort: wall time", f"{wall:.1f} s", "", ""),
        ("cohort: throughput", f"{patients / wall:.2f} patients/s", "", ""),
        ("cohort: 941 patients (time)", f"{full_s:.0f} s", "<= 180 s", f"{full_s / 180:.2f}"),
        ("cohort: DICOM per patient", f"{dicom / patients / 1e6:.2f} MB", "", ""),
        ("cohort: ground truth per patient", f"{truth / patients / 1e6:.3f} MB", "", ""),
        ("cohort: 941 patients (disk)", f"{full_gb:.2f} GB", "< 3 GB", f"{full_gb / 3:.2f}"),
        ("cohort: peak memory, one worker", f"{peak_child:.0f} MiB", "", ""),
        ("cohort: peak memory, coordinator", f"{peak_self:.0f} MiB", "", ""),
    ]


_PREPROCESS_RUN = """
import json, resource, sys
from pathlib import Path
from spinemet.common.cohort.writer import read_labels
from spinemet.common.preprocess.runner import preprocess
data, cache, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
labels = read_labels(data / "labels.csv")
cold = preprocess(data, cache, labels, workers=workers)
warm = preprocess(data, cache, labels, workers=workers)
print(json.dumps({"cold_s": cold.seconds, "computed": cold.computed, "failed": cold.failed[:3],
                  "warm_s": warm.seconds, "cached": warm.cached, "recomputed": warm.computed,
                  "peak_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "peak_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_preprocess(studies: int, workers: int) -> list[tuple]:
    """Cold (empty cache) and cached preprocessing of ``studies`` studies of a fresh cohort,
    in a process of its own so that its peak memory is its own."""
    import json
    import subprocess

    from spinemet.common.cohort.spec import CohortSpec
    from spinemet.common.cohort.writer import write_cohort

    root = Path(tempfile.mkdtemp(prefix="spinemet-bench-pre-"))
    try:
        data = root / "cohort"
        write_cohort(CohortSpec(patients=studies, seed=1), data, workers=workers)
        out = subprocess.run([sys.executable, "-c", _PREPROCESS_RUN, str(data), str(root / "cache"),
                              str(workers)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if r["failed"] or r["recomputed"]:
        raise SystemExit(f"preprocessing benchmark invalid: {r}")
    cold_rate, warm_rate = r["computed"] / r["cold_s"], r["cached"] / r["warm_s"]
    return [
        ("preprocess: studies", f"{r['computed']}", "", ""),
        ("preprocess: cold, every step on", f"{cold_rate:.2f} studies/s", ">= 2 studies/s",
         f"{2.0 / cold_rate:.2f}"),
        ("preprocess: cached", f"{warm_rate:.0f} studies/s", ">= 300 studies/s",
         f"{300.0 / warm_rate:.2f}"),
        ("preprocess: peak memory, one worker", f"{r['peak_worker_mib']:.0f} MiB", "", ""),
        ("preprocess: peak memory, coordinator", f"{r['peak_main_mib']:.0f} MiB", "", ""),
    ]


_TRAINING_RUN = """
import json, resource, sys, time
import torch, torch.nn.functional as F
from spinemet.common.models import build_model
from spinemet.common.training.loop import Tensors, make_optimizer, make_augment, train_epoch
from spinemet.common.training.protocol import TrainConfig, class_weights
model_name, n, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]))
g = torch.Generator().manual_seed(0)
x = torch.rand((n, 5, 180, 52), generator=g)        # speed does not depend on the content
y = torch.arange(n) % 3
data = Tensors(x, y, [str(i) for i in range(n)], ["a"] * n)
cfg = TrainConfig.for_model(model_name)
w = class_weights(data.class_counts())

def project(augment):
    torch.manual_seed(0)
    m = build_model(model_name)
    opt = make_optimizer(m, cfg)
    aug = make_augment(cfg) if augment else None
    train_epoch(m, opt, data, cfg, 0, w, aug)                     # warm-up
    t0 = time.perf_counter()
    for e in range(epochs):
        train_epoch(m, opt, data, cfg, e + 1, w, aug)
    return (time.perf_counter() - t0) / epochs

def bare():
    torch.manual_seed(0)
    m = build_model(model_name)
    opt = torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    def epoch():
        m.train()
        for idx in torch.randperm(n).split(cfg.batch_size):
            opt.zero_grad()
            F.cross_entropy(m(x[idx]), y[idx], weight=w).backward()
            opt.step()
    epoch()
    t0 = time.perf_counter()
    for e in range(epochs):
        epoch()
    return (time.perf_counter() - t0) / epochs

b, p, pa = bare(), project(False), project(True)
print(json.dumps({"bare_s": b, "project_s": p, "augmented_s": pa,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_training(models: list[str], studies: int, epochs: int, threads: int) -> list[tuple]:
    """Seconds per epoch of the project's loop (``train_epoch``) against a bare PyTorch loop on
    the same model, batch size and in-memory tensors, for ``studies`` training studies (753 =
    80 % of 941), each model in a process of its own (its own peak memory)."""
    import json
    import subprocess

    rows = [("training: studies per epoch", f"{studies}", "", ""),
            ("training: torch threads", f"{threads}", "", "")]
    for name in models:
        out = subprocess.run([sys.executable, "-c", _TRAINING_RUN, name, str(studies),
                              str(epochs), str(threads)],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = r["bare_s"] / r["project_s"]      # throughput of ours relative to the bare loop
        rows += [
            (f"training {name}: bare PyTorch loop", f"{r['bare_s']:.2f} s/epoch", "", ""),
            (f"training {name}: project loop", f"{r['project_s']:.2f} s/epoch", "", ""),
            (f"training {name}: throughput vs bare", f"{ratio:.3f}", ">= 0.9",
             f"{0.9 / ratio:.2f}"),
            (f"training {name}: with augmentation", f"{r['augmented_s']:.2f} s/epoch", "", ""),
            (f"training {name}: peak memory", f"{r['peak_mib']:.0f} MiB", "", ""),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=941)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", type=Path, help="write the cohort here and keep it")
    ap.add_argument("--studies", type=int, default=200,
                    help="studies for the preprocessing benchmark (default 200)")
    ap.add_argument("--only", choices=("cohort", "preprocess", "training", "federation",
                                       "simulation"),
                    help="run one group")
    ap.add_argument("--epochs", type=int, default=3,
                    help="timed epochs per loop in the training benchmark (default 3)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of the federation benchmark (default 5)")
    ap.add_argument("--pairs", type=int, default=3,
                    help="alternating centralized / federated pairs of the simulation "
                         "benchmark; its verdict is the median ratio (default 3)")
    ap.add_argument("--data", type=Path, default=Path("data/cohort"),
                    help="cohort of the simulation benchmark (written when missing)")
    ap.add_argument("--cache", type=Path, default=Path("data/cache"),
                    help="its preprocessing cache")
    args = ap.parse_args(argv)
    rows = []
    if args.only in (None, "cohort"):
        rows += bench_cohort(args.patients, args.workers, args.keep)
    if args.only in (None, "preprocess"):
        rows += bench_preprocess(args.studies, args.workers)
    if args.only in (None, "training"):
        from spinemet.common.models import MODELS

        rows += bench_training(list(MODELS), 753, args.epochs, args.workers)
    if args.only in (None, "federation"):
        from .federation import bench_federation

        rows += bench_federation(rounds=args.rounds)
    if args.only in (None, "simulation"):
        from .simulation import bench_simulation

        rows += bench_simulation(args.data, args.cache, pairs=args.pairs)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SpineMet-FL benchmarks")
    for col in ("measure", "value", "target", "ratio"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
