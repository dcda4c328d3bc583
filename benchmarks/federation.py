"""A 3-site loopback deployment with TLS and enrolment, timed round by round.

``flower-server`` and three ``spinemet-client`` processes exactly as a coordinator and
hospitals start them, on a small cohort (the point is the per-round cost, not accuracy).
Per round (``RUN/rounds.jsonl``): wall seconds, the slowest site's own work (scoring the
received weights + local training, measured inside the site worker), and the rest: the
overhead of Flower's message path (polling, one ``flwr-clientapp`` process per message,
TLS, serialisation) and of the coordinator. Round 1 also loads each site's studies into
memory, so the medians use rounds 2..N. The overhead is split with the coordinator's own
timings (``seconds_exchange``, ``seconds_coordinator``, ``seconds_checkpoint`` in each row):
its own work, and Flower's message path (push to last reply minus the slowest site's work),
in which the SuperNode's fixed 3-s idle poll and a measured ``flwr-clientapp`` start are
named.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


#: flwr/supernode/start_client_internal.py: a SuperNode that pulled nothing sleeps 3 s; after
#: pushing a reply it pulls at once (the next round is not ready yet), then sleeps, so every
#: round waits about this long between the last reply and the next message reaching a site
IDLE_POLL = 3.0


def clientapp_start_seconds(bin_dir: Path, repeats: int = 3) -> float:
    """Median wall time of a fresh ``flwr-clientapp --help`` (Python start + Flower imports):
    the SuperNode starts one such process per message."""
    times = []
    for _ in range(repeats):
        t0 = time.monotonic()
        subprocess.run([str(bin_dir / "flwr-clientapp"), "--help"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


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
    seconds = statistics.median(r["seconds"] + r["seconds_checkpoint"] for r in steady)
    work = statistics.median(r["seconds_site_work_max"] for r in steady)
    overhead = statistics.median(r["seconds"] + r["seconds_checkpoint"]
                                 - r["seconds_site_work_max"] for r in steady)
    path = statistics.median(r["seconds_exchange"] - r["seconds_site_work_max"] for r in steady)
    own = statistics.median(r["seconds_coordinator"] + r["seconds_checkpoint"] for r in steady)
    start = clientapp_start_seconds(bin_dir)
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
        ("  of which the coordinator's own work (aggregation, scoring, checkpoint)",
         f"{own:.1f} s", "", ""),
        ("  of which Flower's message path (push -> last reply, minus site work)",
         f"{path:.1f} s", "", ""),
        ("    in it: the idle SuperNode's poll (Flower constant, sleep(3))", f"{IDLE_POLL:.1f} s",
         "", ""),
        ("    in it: a fresh flwr-clientapp process (start to --help, measured)",
         f"{start:.1f} s", "", ""),
        ("    in it: the rest (executor poll, reply push, TLS, serialisation)",
         f"{path - IDLE_POLL - start:.1f} s", "", ""),
        ("federation: round 1 (includes loading the studies)", f"{first['seconds']:.1f} s "
         f"(site work {first['seconds_site_work_max']:.1f} s)", "", ""),
        ("federation: bytes to each site per round / model size",
         f"{down / 1e3:.1f} kB / {model_bytes / 1e3:.1f} kB", "", f"{down / model_bytes:.2f}"),
        ("federation: bytes from each site per round / model size",
         f"{up / 1e3:.1f} kB / {model_bytes / 1e3:.1f} kB", "", f"{up / model_bytes:.2f}"),
    ]
