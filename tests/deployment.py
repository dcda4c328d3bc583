"""Real processes for the deployment tests: ``flower-server`` and ``spinemet-client`` on
loopback, the way a coordinator and hospitals start them.

Every process gets one torch thread and its own process group; :class:`Procs` kills the
groups at the end of a test whatever happened. Tests synchronise on files the run writes
(``status.json``, ``rounds.jsonl``, checkpoints), never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "COLUMNS": "200"}


class Proc:
    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None):
        self.name, self.log = name, log
        self._fh = open(log, "wb")
        self.p = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT,
                                  env={**ENV, **(env or {})}, stdin=subprocess.DEVNULL,
                                  start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.p.wait(timeout=timeout)

    def kill(self, sig=signal.SIGKILL) -> None:
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self.p.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
                self.p.wait(timeout=10)
        self._fh.close()


class Procs:
    """Starts the processes of one test and stops them all afterwards."""

    def __init__(self, root: Path):
        self.root = root
        self.started: list[Proc] = []

    def server(self, out: Path, certs: Path | None, host: str, port: int, *args: str) -> Proc:
        cmd = [str(BIN / "flower-server"), "--out", str(out), "--host", host,
               "--port", str(port), "--threads", "1", *args]
        cmd += ["--certs", str(certs)] if certs else ["--insecure"]
        return self._start(f"server-{out.name}", cmd)

    def resume(self, out: Path) -> Proc:
        return self._start(f"server-{out.name}-resumed",
                           [str(BIN / "flower-server"), "--resume", str(out)])

    def client(self, site: str, data: Path, server: str, certs: Path | None, cache: Path,
               runtime_port: int, *args: str, env: dict | None = None) -> Proc:
        cmd = [str(BIN / "spinemet-client"), "--site", site, "--data", str(data),
               "--server", server, "--cache", str(cache), "--runtime-port", str(runtime_port),
               "--threads", "1", "--workers", "1", *args]
        cmd += ["--certs", str(certs)] if certs else ["--insecure"]
        return self._start(f"client-{site}-{cache.name}", cmd, env)

    def _start(self, name: str, cmd: list[str], env: dict | None = None) -> Proc:
        proc = Proc(name, cmd, self.root / f"{name}-{len(self.started)}.log", env)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.started):
            proc.close()


def wait_for(predicate, timeout: float, what: str, procs: list[Proc] = (), poll: float = 0.5):
    """Poll ``predicate`` until truthy; fail with the processes' log tails otherwise."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.text().splitlines()[-25:]) for p in procs)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def rounds(run: Path) -> list[dict]:
    path = run / "rounds.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_completed(run: Path, code: int, log: str, num_rounds: int = 2,
                     sites: int = 3) -> list[dict]:
    """flower-server exited 0, the run says completed, and every round aggregated every
    site; returns the rounds (the final evaluation's line last)."""
    assert code == 0, log[-3000:]
    assert status(run)["state"] == "completed"
    rows = rounds(run)
    assert [r["round"] for r in rows] == [*range(1, num_rounds + 1), None]
    assert all(r["aggregated"] == sites for r in rows[:num_rounds])
    return rows


def copy_cache(cache: Path, to: Path) -> Path:
    """A site cache without the running worker's socket/key and SuperNode state."""
    shutil.copytree(cache, to, ignore=shutil.ignore_patterns(
        "worker.*", "flwr-home", "*.log"))
    return to
