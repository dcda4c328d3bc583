"""Measure the project's speed and size targets in one run and print them as a table.

    python -m benchmarks                      # the full default cohort (941 patients)
    python -m benchmarks --patients 100       # a quicker look (scaled to 941 in the table)

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=941)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", type=Path, help="write the cohort here and keep it")
    args = ap.parse_args(argv)
    rows = bench_cohort(args.patients, args.workers, args.keep)
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
