"""Simulation mode: virtual hospitals' data, the paired gap, and ``spinemet simulate`` end to
end on Flower's simulation engine (small cohort: the numbers are about bookkeeping, not
accuracy; the headline accuracy is in the README and comes from ``spinemet simulate`` on
the default cohort)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from spinemet.client.app import node_config
from spinemet.client.site_data import load_site
from spinemet.common.preprocess.pipeline import default_pipeline
from spinemet.common.training.data import split_tensors
from spinemet.common.training.protocol import TrainConfig
from spinemet.simulations.partition import (parse_partition, partition_patients,
                                            write_partition)
from spinemet.simulations.scoring import Scored, paired_gap

BIN = Path(sys.executable).parent


def _pooled(cache: Path):
    config = TrainConfig.for_model("paper")
    return config, split_tensors(cache, default_pipeline().hash(), config)


def _partition(cache: Path, tmp_path: Path, n: int = 3) -> tuple[Path, dict, list[dict]]:
    config, (fit, val, test) = _pooled(cache)
    rows = [{"patient_id": p, "label": int(y), "site": s}
            for t in (fit, val) for p, y, s in zip(t.patient_ids, t.y.tolist(), t.sites)]
    part = partition_patients(rows, n, parse_partition("iid"), seed=3)
    path = tmp_path / "partition.json"
    write_partition(path, part, rows, parse_partition("iid"), 3)
    return path, part, rows


def test_virtual_hospitals_hold_exactly_the_pooled_training_patients(small_cache, tmp_path):
    path, part, _ = _partition(small_cache, tmp_path)
    config, (fit, val, test) = _pooled(small_cache)
    fits, vals = [], []
    for i, name in enumerate(sorted(part)):
        ctx = SimpleNamespace(node_config={"partition-id": i, "num-partitions": len(part)},
                              run_config={"sim-partition": str(path),
                                          "sim-cache": str(small_cache)})
        node = node_config(ctx)
        assert node["site"] == name and node["cache-path"] == str(small_cache)
        site = load_site(node, config)
        assert len(site.test) == 0           # test patients stay with the coordinator
        assert set(site.fit.patient_ids) | set(site.val.patient_ids) == set(part[name])
        fits += site.fit.patient_ids
        vals += site.val.patient_ids
    # the federation fits and selects on exactly the centralized run's patients
    assert sorted(fits) == sorted(fit.patient_ids)
    assert sorted(vals) == sorted(val.patient_ids)
    assert not set(fits + vals) & set(test.patient_ids)


def test_a_real_site_node_config_is_never_redirected_by_the_run_config(tmp_path):
    ctx = SimpleNamespace(node_config={"site": "A", "cache-path": "/data/A", "partition-id": 0},
                          run_config={"sim-partition": str(tmp_path / "p.json"),
                                      "sim-cache": "/elsewhere"})
    assert node_config(ctx) == ctx.node_config


def _scored(correct) -> Scored:
    correct = np.asarray(correct, bool)
    return Scored({}, correct, [f"p{i}" for i in range(len(correct))])


def test_paired_gap_is_the_accuracy_difference_with_a_paired_interval():
    rng = np.random.default_rng(0)
    both = rng.random(400) < 0.9
    gap, (lo, hi) = paired_gap([_scored(both)], [_scored(both)])
    assert gap == 0 and lo == 0 and hi == 0      # identical answers: no gap, no spread
    worse = both.copy()
    worse[np.flatnonzero(both)[:20]] = False      # federated wrong on 20 more patients
    gap, (lo, hi) = paired_gap([_scored(both)], [_scored(worse)])
    assert gap == pytest.approx(100 * 20 / 400)
    assert 0 <= lo < gap < hi
    # paired: far narrower than the two models' separate bootstrap intervals (~ +-3 points)
    assert hi - lo < 4.5
    # two seeds: the mean of the per-seed gaps
    gap2, _ = paired_gap([_scored(both), _scored(both)], [_scored(worse), _scored(both)])
    assert gap2 == pytest.approx(100 * 10 / 400)
    with pytest.raises(ValueError, match="same patients"):
        paired_gap([_scored(both)], [Scored({}, both, [f"q{i}" for i in range(400)])])


def _flower_processes(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(cmd)
    return found


def test_simulate_end_to_end(small_cohort, small_cache, tmp_path):
    out = tmp_path / "run"
    cmd = [str(BIN / "spinemet"), "simulate", "--data", str(small_cohort.path), "--cache",
           str(small_cache), "--out", str(out), "--sites", "3", "--rounds", "2",
           "--local-epochs", "1", "--seeds", "0", "--extra-patients", "6",
           "--extra-data", str(tmp_path / "extra"), "--workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rep = json.loads((out / "reproduction.json").read_text())
    assert (rep["partition"], rep["sites"], rep["rounds"], rep["local_epochs"],
            rep["central_epochs"], rep["strategy"]) == ("iid", 3, 2, 1, 2, "fedavg")
    seed = out / "seed-0"
    split = json.loads((seed / "central" / "split.json").read_text())
    assert rep["n_patients"] == {"test": len(split["test"]), "extra": 6}
    for part in ("test", "extra"):
        central = rep["central"]["per_seed"]["0"][part]["accuracy"]
        federated = rep["federated"]["per_seed"]["0"][part]["accuracy"]
        assert rep["gap_pp"][part] == pytest.approx(100 * (central - federated))
        lo, hi = rep["gap_ci_pp"][part]
        assert lo <= rep["gap_pp"][part] <= hi
        assert rep["central"][part]["accuracy"]["mean"] == pytest.approx(central)
    for side in ("central", "federated"):
        assert rep[side]["wall_seconds"]["mean"] > 0
    # the default hospitals' batch (8), and the hospitals were told so
    from spinemet.server.checkpoint import latest_checkpoint, load_checkpoint
    assert rep["batch_size"] == {"central": 16, "local": 8, "rule": "8"}
    fed_checkpoint = load_checkpoint(latest_checkpoint(seed / "federated"))
    assert fed_checkpoint["settings"]["batch_size"] == 8
    # the hospitals hold the centralized run's training patients, and nothing else
    hospitals = json.loads((seed / "partition.json").read_text())["hospitals"]
    assert sorted(p for h in hospitals.values() for p in h["patients"]) == split["train"]
    log = (seed / "federated" / "serverapp.log").read_text()
    central = json.loads((seed / "central" / "metrics.json").read_text())
    joined = [tuple(int(x) for x in line.split("joined: ")[1].split(" studies")[0:1]
                    + line.split("fit, ")[1].split(" to validate")[0:1])
              for line in log.splitlines() if "joined:" in line]
    assert len(joined) == 3
    assert sum(j[0] for j in joined) == central["n_fit"]
    assert sum(j[1] for j in joined) == central["n_validation"]
    rounds = [json.loads(x) for x in (seed / "federated" / "rounds.jsonl").read_text()
              .splitlines() if x]
    assert [r["round"] for r in rounds] == [1, 2, None]
    assert all(0 <= r["server_test_accuracy"] <= 1 for r in rounds)
    assert (out / "report.md").read_text().count("## Table 1") == 2
    assert (out / "accuracy_per_round.png").read_bytes()[:4] == b"\x89PNG"
    # the SuperLink it started (and its simulation process) are gone
    assert _flower_processes(str(seed / "federated")) == []
    # re-run with the same plan: everything is kept, nothing retrained
    timing = (seed / "timing.json").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (seed / "timing.json").read_text() == timing
    assert json.loads((out / "reproduction.json").read_text())["gap_pp"] == rep["gap_pp"]
    # another plan in the same folder is refused, naming what differs
    other = subprocess.run(cmd[:-2] + ["--workers", "1", "--rounds", "3"], capture_output=True,
                           text=True, timeout=300)
    assert other.returncode == 2 and "rounds" in other.stderr


def test_a_failed_simulation_run_raises_and_leaves_no_process(small_cache, tmp_path):
    from spinemet.simulations.engine import SimulationError, SimulationRun, run_simulation

    path, part, _ = _partition(small_cache, tmp_path)
    out = tmp_path / "fed"
    with pytest.raises(SimulationError, match="strategy 'nonsense'"):
        run_simulation(SimulationRun(out=out, hospitals=len(part), run_config={
            "strategy": "nonsense", "sim-partition": str(path), "sim-cache": str(small_cache)}))
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert _flower_processes(str(out)) == []


def _actor_raylets(temp_dir: str) -> set[int]:
    """Parent PIDs (the raylets) of the running ``ray::ClientAppActor`` processes whose
    raylet belongs to the cluster under ``temp_dir`` (another Ray instance on the machine,
    e.g. a simulation in a parallel test worker, is not counted)."""
    parents = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if not (proc / "cmdline").read_bytes().startswith(b"ray::ClientAppActor"):
                continue
            stat = (proc / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if temp_dir.encode() in Path(f"/proc/{parent}/cmdline").read_bytes():
                parents.add(parent)
        except (OSError, ValueError, IndexError):
            continue
    return parents


def test_simulation_on_an_existing_ray_cluster(small_cache, tmp_path):
    """Scale-out: `ray start --head` and a second node on loopback, RAY_ADDRESS, and the
    virtual hospitals' ClientApps run on both nodes."""
    import threading
    import time

    from spinemet.common.processes import Child, free_port, port_open
    from spinemet.simulations.engine import SimulationRun, run_simulation

    import shutil
    import tempfile

    path, part, _ = _partition(small_cache, tmp_path, n=2)
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")   # Unix socket paths are short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--block"]
    nodes = [Child("ray-head", [str(BIN / "ray"), "start", "--head", "--port", str(port),
                                "--temp-dir", ray_tmp, "--include-dashboard",
                                "false", "--disable-usage-stats", *common],
                   tmp_path / "ray-head.log", env)]
    seen: set[int] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.update(_actor_raylets(ray_tmp))
            stop.wait(0.3)

    try:
        deadline = time.monotonic() + 180
        while not port_open("127.0.0.1", port):
            assert nodes[0].alive() and time.monotonic() < deadline, nodes[0].text()[-2000:]
            time.sleep(0.5)
        nodes.append(Child("ray-worker", [str(BIN / "ray"), "start", "--address",
                                          f"127.0.0.1:{port}", *common],
                           tmp_path / "ray-worker.log", env))
        while "block forever" not in nodes[1].text():
            assert nodes[1].alive() and time.monotonic() < deadline, nodes[1].text()[-2000:]
            time.sleep(0.5)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        status = run_simulation(SimulationRun(
            out=tmp_path / "fed", hospitals=2, env={"RAY_ADDRESS": f"127.0.0.1:{port}"},
            run_config={"num-rounds": 2, "local-epochs": 1, "min-sites": 2,
                        "sim-partition": str(path), "sim-cache": str(small_cache),
                        "test-cache": str(small_cache), "test-split": "test"}))
        stop.set()
        watcher.join()
        assert status["state"] == "completed" and status["round"] == 2
        # one ClientApp actor per node: each node's raylet parented one
        assert len(seen) == 2, seen
    finally:
        stop.set()
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_plan_says_whether_the_two_sides_train_at_equal_compute():
    from spinemet.simulations.reproduction import Plan

    equal = Plan(data="d", out="o", cache="c", rounds=20, local_epochs=5, local_batch="central")
    assert equal.central_epochs == 100 and equal.equal_compute
    assert equal.compute_text() == ("centralized 100 epochs = 20 rounds x 5 local epochs at "
                                    "every hospital")
    assert "central_epochs_override" not in equal.key()    # older plan.json files still match
    more = Plan(data="d", out="o", cache="c", rounds=100, local_epochs=5,
                central_epochs_override=100)
    assert more.central_epochs == 100 and not more.equal_compute
    assert "5x the centralized compute, NOT equal compute" in more.compute_text()
    assert more.key()["central_epochs_override"] == 100
    sampled = Plan(data="d", out="o", cache="c", fraction=0.5)
    assert not sampled.equal_compute and "NOT equal compute" in sampled.compute_text()


def test_the_hospitals_batch_is_the_centralized_batch_over_the_hospitals_per_round():
    from spinemet.simulations.reproduction import Plan

    assert Plan(data="d", out="o", cache="c").local_batch_size(5) == 8    # the default
    scaled = Plan(data="d", out="o", cache="c", local_batch="scaled")   # paper: batch 16
    assert [scaled.local_batch_size(k) for k in (1, 3, 5, 16, 40)] == [16, 5, 3, 1, 1]
    assert Plan(data="d", out="o", cache="c", fraction=0.1,
                local_batch="scaled").local_batch_size(100) == 2
    assert Plan(data="d", out="o", cache="c", local_batch="central").local_batch_size(5) == 16
    assert Plan(data="d", out="o", cache="c", local_batch="7").local_batch_size(5) == 7
    assert "one step across the federation consumes one centralized batch" in \
        scaled.compute_text() and scaled.key()["local_batch"] == "scaled"
    for bad in ("0", "half", "-3"):
        with pytest.raises(ValueError, match="not scaled, central or a positive integer"):
            Plan(data="d", out="o", cache="c", local_batch=bad)
    old = Plan(data="d", out="o", cache="c", rounds=20, local_epochs=5, local_batch="central")
    assert "local_batch" not in old.key()     # plan.json files from before the option match


def test_without_an_extra_cohort_the_summary_and_report_use_the_test_split(tmp_path):
    """`make run` (``--extra-patients 0``): every number comes from the test split, the
    declared check is judged there, and nothing names an extra cohort."""
    from spinemet.common.metrics import classification_metrics
    from spinemet.simulations.reproduction import Plan, SeedResult, summarise
    from spinemet.simulations.reproduction_report import write_reproduction_report

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 20)
    ids = [f"p{i}" for i in range(len(y))]

    def scored(p_correct: float) -> Scored:
        right = rng.random(len(y)) < p_correct
        pred = np.where(right, y, (y + 1) % 3)
        proba = np.full((len(y), 3), 0.1)
        proba[np.arange(len(y)), pred] = 0.8
        m = classification_metrics(y, proba, bootstrap=50)
        return Scored(m, pred == y, ids)

    plan = Plan(data=str(tmp_path / "cohort"), out=str(tmp_path / "run"), cache="c",
                extra_patients=0, seeds=(0, 1))
    results = []
    for seed in (0, 1):
        r = SeedResult(seed, 100.0, 150.0, central={"test": scored(0.9)},
                       federated={"test": scored(0.8)}, central_best_epoch=90,
                       federated_best_round=95, central_val_loss=0.15 + seed / 100,
                       federated_val_loss=0.30)
        r.federated_rounds = [{"round": k, "evaluated_round": k - 1,
                               "server_test_accuracy": 0.3 + 0.005 * k} for k in range(1, 101)]
        results.append(r)
    summary = summarise(plan, results, 5)
    assert list(summary["gap_pp"]) == ["test"] and summary["extra_cohort"] is None
    assert summary["n_patients"] == {"test": 60}
    acc = [[r.central["test"].metrics["accuracy"], r.federated["test"].metrics["accuracy"]]
           for r in results]
    assert summary["gap_pp"]["test"] == pytest.approx(
        100 * np.mean([c - f for c, f in acc]))
    assert summary["wall_ratio"] == pytest.approx(1.5)
    out = tmp_path / "run"
    out.mkdir()
    text = write_reproduction_report(out, summary, results).read_text()
    assert "extra" not in text.lower()
    assert "on the test split <= 1 point" in text and "(n = 60)" in text
    assert "centralized 0.155, federated 0.300" in text and "2 of 2 in the last tenth" in text
    assert summary["federated"]["per_seed"]["1"]["best_val_loss"] == 0.30
    assert summary["central"]["per_seed"]["1"]["best_val_loss"] == pytest.approx(0.16)
    for png in ("accuracy_per_round.png", "confusion_central.png", "confusion_federated.png"):
        assert (out / png).stat().st_size > 1000, png


def test_the_report_reads_the_gap_from_the_validation_losses_and_selected_rounds():
    """The report's diagnosis: under-trained (higher validation loss, selected late),
    converged worse (higher loss, selected early), or not explained by fit (lower loss)."""
    from spinemet.simulations.reproduction import SeedResult
    from spinemet.simulations.reproduction_report import diagnosis

    summary = {"rounds": 100, "central_epochs": 100}

    def results(fed_loss, fed_round):
        return [SeedResult(s, 1.0, 1.0, central_best_epoch=60, federated_best_round=fed_round,
                           central_val_loss=0.15, federated_val_loss=fed_loss) for s in (0, 1)]

    text = "\n".join(diagnosis(summary, results(0.35, 97)))
    assert "centralized 0.150, federated 0.350" in text and "2 of 2 in the last tenth" in text
    assert "under-trained" in text
    text = "\n".join(diagnosis(summary, results(0.35, 40)))
    assert "0 of 2 in the last tenth" in text and "converged to a worse model" in text
    assert "under-trained at" not in text
    mixed = results(0.35, 97)[:1] + results(0.35, 40) + results(0.35, 50)
    text = "\n".join(diagnosis(summary, mixed))
    assert "1 of 5 in the last tenth" in text and "mixed" in text
    text = "\n".join(diagnosis(summary, results(0.10, 97)))
    assert "not explained by under-training" in text
    no_loss = [SeedResult(0, 1.0, 1.0)]
    assert diagnosis(summary, no_loss) == ["- The runs recorded no validation loss to compare."]


def test_the_central_val_loss_is_read_at_the_selected_epoch(tmp_path):
    from spinemet.simulations.reproduction import _central_val_loss

    history = tmp_path / "history.csv"
    history.write_text("epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy\n"
                       "1,0.1,1.2,0.3,1.10,0.33\n2,0.1,0.9,0.5,0.75,0.60\n")
    assert _central_val_loss(history, 2) == pytest.approx(0.75)
    assert _central_val_loss(history, 3) is None
    assert _central_val_loss(tmp_path / "missing.csv", 1) is None


def test_a_local_ray_gets_an_extra_clientapp_when_a_round_leaves_a_core_idle():
    from spinemet.simulations.engine import SimulationRun, ray_cpus, simulation_config
    # 5 hospitals on 2 cores: waves 2 + 2 + 1 would idle a core; 3 actors: 3 + 2
    assert ray_cpus(5, 2) == 3 and ray_cpus(3, 2) == 3 and ray_cpus(7, 4) == 5
    # whole waves, or no more hospitals than cores: one actor per core
    assert ray_cpus(4, 2) == 2 and ray_cpus(20, 2) == 2 and ray_cpus(100, 2) == 2
    assert ray_cpus(1, 2) == 2 and ray_cpus(2, 8) == 8
    # ClientApps of 2 CPUs on 4 cores: 2 slots; 3 hospitals -> a third slot (6 CPUs)
    assert ray_cpus(3, 4, cpus_per_client=2) == 6 and ray_cpus(4, 4, cpus_per_client=2) == 4
    local = simulation_config(SimulationRun(out=Path("/x"), run_config={}, hospitals=5,
                                            cpus=ray_cpus(5, 2), env={"RAY_ADDRESS": "local"}))
    assert local["init_args_num_cpus"] == 3 and local["client_resources_num_cpus"] == 1
    # a cluster's nodes say what they have: Ray refuses num_cpus there
    cluster = simulation_config(SimulationRun(out=Path("/x"), run_config={}, hospitals=5,
                                              cpus=ray_cpus(5, 2),
                                              env={"RAY_ADDRESS": "10.0.0.1:6379"}))
    assert "init_args_num_cpus" not in cluster
