"""``flwr run . local`` runs the project's own Flower app on Flower's simulation engine.

The user-facing route (docs/simulation.md): Flower's CLI, the app folder ``.`` (the
project root: the bundle holds ``pyproject.toml`` alone, ``fab-include``), the built-in
``local`` connection (``address = ":local:"`` in ``$FLWR_HOME/config.toml``), and a run
config naming absolute paths. ``flwr run`` starts a *detached* ``flower-superlink
--simulation`` (flwr/cli/local_superlink.py) that outlives the command: the test finds it by
its port and stops it, then checks that nothing it started is left: no process naming the
temporary ``FLWR_HOME`` or the port, or running with that ``FLWR_HOME``, or in the process
sessions of the SuperLink and its executor (Ray's workers hide the other two marks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spinemet.common.preprocess.pipeline import default_pipeline
from spinemet.common.processes import flower_env, free_port
from spinemet.common.training.data import split_tensors
from spinemet.common.training.protocol import TrainConfig
from spinemet.server.outputs import read_rounds, read_status
from spinemet.simulations.partition import (parse_partition, partition_patients,
                                            write_partition)

ROOT = Path(__file__).resolve().parents[1]          # the app folder: pyproject.toml
FLWR = str(Path(sys.executable).parent / "flwr")
HOSPITALS = 2
ROUNDS = 2


def _partition(cache: Path, path: Path) -> dict[str, list[str]]:
    """The pooled fit+val patients (the centralized run's) over the virtual hospitals."""
    config = TrainConfig.for_model("paper")
    fit, val, _test = split_tensors(cache, default_pipeline().hash(), config)
    rows = [{"patient_id": p, "label": int(y), "site": s}
            for t in (fit, val) for p, y, s in zip(t.patient_ids, t.y.tolist(), t.sites)]
    part = partition_patients(rows, HOSPITALS, parse_partition("iid"), seed=3)
    write_partition(path, part, rows, parse_partition("iid"), 3)
    return part


def _processes() -> dict[int, tuple[list[str], bytes, int]]:
    """pid -> (cmdline tokens, environ, session id) of every live process but this one."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if cmd and stat[0] != "Z":                      # zombies hold nothing
            found[int(proc.name)] = ([t.decode(errors="replace") for t in cmd.split(b"\0")],
                                     environ, int(stat[3]))
    return found


def _mentions(cmd: list[str], environ: bytes, home: Path, port: int) -> bool:
    """The command line names the temporary FLWR_HOME or the SuperLink's port, or the
    process runs with that FLWR_HOME (flwr-simulation, Ray's head processes)."""
    by_port = any(t.endswith(f"127.0.0.1:{port}") for t in cmd) or any(
        a == "--port" and b == str(port) for a, b in zip(cmd, cmd[1:]))
    return (by_port or any(str(home) in t for t in cmd)
            or f"FLWR_HOME={home}".encode() in environ.split(b"\0"))


def _sessions(home: Path, port: int) -> set[int]:
    """The process sessions of what ``flwr run`` started: the SuperLink and its
    flower-superexec are each started with ``start_new_session=True``; flwr-simulation, Ray
    and its ClientApp actors stay in the executor's session. Ray's workers rewrite their
    command line (``ray::ClientAppActor``) and, with it, the environment block /proc shows,
    so the session is what still ties them to this run. This test's own session is never
    one of them (the flwr CLI runs in it)."""
    own = os.getsid(0)
    return {sid for cmd, environ, sid in _processes().values()
            if sid != own and _mentions(cmd, environ, home, port)}


def _left_over(home: Path, port: int, sessions: set[int]) -> dict[int, str]:
    return {pid: " ".join(cmd) for pid, (cmd, environ, sid) in _processes().items()
            if sid in sessions or _mentions(cmd, environ, home, port)}


def _superlinks(port: int) -> list[int]:
    """The detached ``flower-superlink --simulation`` that ``flwr run`` started on ``port``."""
    return [pid for pid, (cmd, _, _) in _processes().items()
            if any(t.endswith("flower-superlink") for t in cmd)
            and any(a == "--port" and b == str(port) for a, b in zip(cmd, cmd[1:]))]


def _stop_local_superlink(home: Path, port: int, sessions: set[int],
                          grace: float = 30.0) -> dict[int, str]:
    """SIGTERM the SuperLink (its shutdown terminates flower-superexec, whose children
    watch their parent), wait, then SIGKILL whatever is left; returns what was killed."""
    sessions = sessions | _sessions(home, port)
    for pid in _superlinks(port):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while _left_over(home, port, sessions) and time.monotonic() < deadline:
        time.sleep(0.5)
    killed = _left_over(home, port, sessions)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return killed


def _flwr(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([FLWR, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_flwr_run_local_runs_the_app_on_the_simulation_engine(small_cache, tmp_path):
    part_file = tmp_path / "partition.json"
    part = _partition(small_cache, part_file)
    assert len(part) == HOSPITALS
    out = tmp_path / "run"
    home = tmp_path / "flwr-home"
    port = free_port()
    env = flower_env(home, threads=1, COLUMNS="200",
                     FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port),
                     # the deprecated gRPC Control API address flwr still passes (unused
                     # unless FLWR_INTERNAL_GRPC_CONTROL_API=1): keep it off the default too
                     FLWR_LOCAL_CONTROL_API_PORT=str(free_port()))
    env.pop("RAY_ADDRESS", None)
    run_config = " ".join([
        f'out-dir="{out}"', f'sim-partition="{part_file}"', f'sim-cache="{small_cache}"',
        f'test-cache="{small_cache}"', 'test-split="test"', f"min-sites={HOSPITALS}",
        f"num-rounds={ROUNDS}", "local-epochs=1", "wait-for-sites=60.0",
        "round-timeout=600.0"])
    federation = f"num-supernodes={HOSPITALS} client-resources-num-cpus=1"
    t0, sessions = time.monotonic(), set()
    try:
        done = _flwr(["run", ".", "local", "--run-config", run_config,
                      "--federation-config", federation, "--stream"], env, timeout=600)
        ran = time.monotonic() - t0
        sessions = _sessions(home, port)
        log = home / "local-superlink" / "superlink.log"
        text = (done.stdout[-3000:] + done.stderr[-3000:]
                + (log.read_text()[-3000:] if log.is_file() else ""))
        assert done.returncode == 0, text
        assert f"Starting local SuperLink on 127.0.0.1:{port}" in done.stdout, text
        assert _superlinks(port), "flwr run started no detached SuperLink on the port"
        # the SuperLink's executor got no --allow-runtime-dependency-installation (the
        # environment variable reached the detached SuperLink): no `uv sync` of the app
        executors = [cmd for cmd, _, _ in _processes().values()
                     if any(t.endswith("flower-superexec") for t in cmd)
                     and f"127.0.0.1:{port}" in cmd]
        assert len(executors) == 1, executors
        assert "--allow-runtime-dependency-installation" not in executors[0], executors
        # flwr run exits 0 even when the ServerApp fails: the run's status decides
        deadline, runs = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            ls = _flwr(["ls", "local", "--format", "json"], env, timeout=120)
            assert ls.returncode == 0, ls.stdout + ls.stderr
            runs = json.loads(ls.stdout)["runs"]
            if runs and all(r["status"].startswith("finished") for r in runs):
                break
            time.sleep(1)
        assert len(runs) == 1 and runs[0]["status"] == "finished:completed", (runs, text)
        assert runs[0]["fab-id"] == "spinemet/spinemet", runs
        status = read_status(out)
        assert status["state"] == "completed", status
        rows = read_rounds(out)
        assert [r["round"] for r in rows] == [*range(1, ROUNDS + 1), None], rows
        assert all(r["aggregated"] == HOSPITALS for r in rows[:ROUNDS]), rows
        assert (out / "model.pt").is_file()
        # FLWR_HOME is the temporary one: connections, the local SuperLink's state and log,
        # and the installed bundle, which holds pyproject.toml alone (fab-include) although
        # the app folder is the project root with data/, runs/ and .venv/
        assert (home / "config.toml").is_file()
        assert (home / "local-superlink" / "superlink.log").is_file()
        installed = [p for p in (home / "apps").iterdir() if p.is_dir()]
        assert len(installed) == 1, installed
        assert sorted(p.relative_to(installed[0]).as_posix()
                      for p in installed[0].rglob("*")) == ["pyproject.toml"]
        print(f"flwr run took {ran:.1f} s (run {runs[0]['run-id']}, "
              f"elapsed {runs[0]['elapsed']})")
    finally:
        killed = _stop_local_superlink(home, port, sessions)
        deadline = time.monotonic() + 10      # SIGKILLed processes need a moment to go
        while _left_over(home, port, sessions) and time.monotonic() < deadline:
            time.sleep(0.5)
    assert not _superlinks(port)
    assert not _left_over(home, port, sessions), (_left_over(home, port, sessions), killed)
