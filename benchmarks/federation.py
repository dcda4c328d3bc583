"""A 3-site loopback deployment with TLS and enrolment, timed round by round.

``flower-server`` and three ``spinemet-client`` processes exactly as a coordinator and
hospitals start them, on a small cohort (the point is the per-round cost, not accuracy).
Per round (``RUN/rounds.jsonl``): wall seconds, the slowest site's own work (scoring the
received weights + local training, measured inside the site worker), and the rest: the
overhead of Flower's message path (polling, one ``flwr-clientapp`` process per message,
TLS, serialisation) and of the coordinator. Round 1 also loads each site's studies into
memory, so the medians use rounds 2..N.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def bench_federation(rounds: int = 5, patients: int = 36, local_epochs: int = 1,
                     model: str = "paper", threads: int = 1) -> list[tuple]:
    from spinemet.common.certs import init_pki
    from spinemet.common.cohort.spec import CohortSpec
    from spinemet.common.cohort.writer import write_cohort
    from spinemet.common.models import build_model, parameter_count
    from spinemet.common.preprocess.pipeline import default_pipeline
    from spinemet.common.processes import Child, free_port

    root = Path(tempfile.mkdtemp(prefix="spinemet-bench-fed-"))
    cohort = root / "cohort"
    write_cohort(CohortSpec(patients=patients, sites=3, seed=21), cohort, workers=2)
    sites = sorted(p.name for p in cohort.iterdir() if (p / "labels.csv").is_file())
    init_pki(root / "pki", "localhost", sites)
    port = free_port()
    bin_dir = Path(sys.executable).parent
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    run = root / "run"
    server = Child("server", [str(bin_dir / "flower-server"), "--certs",
                              str(root / "pki" / "coordinator"), "--out", str(run),
                              "--host", "127.0.0.1", "--port", str(port),
                              "--rounds", str(rounds), "--local-epochs", str(local_epochs),
                              "--model", model, "--min-sites", "3", "--round-timeout", "600",
                              "--threads", str(threads)], root / "server.log")
    clients = [Child(f"client-{s}", [str(bin_dir / "spinemet-client"), "--site", s,
                                     "--data", str(cohort / s), "--server", f"localhost:{port}",
                                     "--certs", str(root / "pki" / "sites" / s),
                                     "--cache", str(root / f"cache-{s}"),
                                     "--runtime-port", str(free_port()),
                                     "--threads", str(threads), "--workers", "1"],
                       root / f"client-{s}.log") for s in sites]
    t0 = time.monotonic()
    try:
        code = server.proc.wait(timeout=3600)
    finally:
        for c in clients:
            c.stop()
        server.stop()
    if code != 0:
        raise RuntimeError(f"the benchmark run failed (exit {code}); see {root}/server.log")
    rows = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()
            if line.strip()]
    train_rows = [r for r in rows if r.get("round")]
    steady = train_rows[1:] or train_rows
    seconds = statistics.median(r["seconds"] for r in steady)
    work = statistics.median(r["seconds_site_work_max"] for r in steady)
    overhead = statistics.median(r["seconds"] - r["seconds_site_work_max"] for r in steady)
    first = train_rows[0]
    model_bytes = 4 * parameter_count(build_model(model, default_pipeline().output_shape))
    down = statistics.median(r["bytes_down_per_site"] for r in steady)
    up = statistics.median(r["bytes_up_per_site"] for r in steady)
    return [
        (f"federation ({model}, 3 sites, TLS + auth): wall time of the whole run",
         f"{time.monotonic() - t0:.0f} s", "", ""),
        ("federation: seconds per round (median of rounds 2..N)", f"{seconds:.1f} s", "", ""),
        ("federation: slowest site's work per round (scoring + local training)",
         f"{work:.1f} s", "", ""),
        ("federation: overhead per round (round - site work)", f"{overhead:.1f} s", "<= 5 s",
         f"{overhead / 5:.2f}"),
        ("federation: round 1 (includes loading the studies)", f"{first['seconds']:.1f} s "
         f"(site work {first['seconds_site_work_max']:.1f} s)", "", ""),
        ("federation: bytes to each site per round / model size",
         f"{down / 1e3:.1f} kB / {model_bytes / 1e3:.1f} kB", "", f"{down / model_bytes:.2f}"),
        ("federation: bytes from each site per round / model size",
         f"{up / 1e3:.1f} kB / {model_bytes / 1e3:.1f} kB", "", f"{up / model_bytes:.2f}"),
    ]
