"""The multi-host test: a coordinator and three hospitals, each on its own "host" (a Linux
network namespace with its own address on a private link), running the real commands over
TLS with site enrolment. During round 1 one hospital's link is cut and restored.

    sudo deploy/multihost-test.sh [--work DIR] [--keep]     # or: python deploy/multihost.py

What it runs is what ``deploy/README.md`` tells an operator and a hospital to run
(:func:`commands`; ``tests/test_deploy_artifacts.py`` keeps the two the same):
``spinemet cohort`` (a 24-patient synthetic cohort, 3 hospitals), ``spinemet certs init``
(two sites) and ``spinemet certs add-site`` (the third enrolled later), ``flower-server`` in
the coordinator's namespace, ``spinemet-client`` in each hospital's.

It observes, from outside the parties: the TCP peers of the coordinator's Fleet API port
(``ss`` in the coordinator's namespace), the bytes each hospital sends into the network (its
bridge port's counter), which of the coordinator's listening ports each hospital can
connect to, and the run folder. ``tests/test_multihost.py`` asserts on that; run as a
script, :func:`failures` does. Every namespace and process it made is removed at the end,
also on failure or Ctrl-C; a run killed with SIGKILL is cleaned up by the next one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netns  # noqa: E402  (deploy/ is not a package)

SITES = ["hospital-a", "hospital-b", "hospital-c"]
CUT_SITE = "hospital-c"
PORT = 9092
CUT_SECONDS = 15.0
ROUNDS = 2
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "COLUMNS": "200",
       "PYTHONUNBUFFERED": "1"}


def commands(work: Path, bin_dir: Path, coordinator: str, cohort: Path) -> dict[str, list[str]]:
    """Every project command the test runs, by step (the operator guide shows the same)."""
    b = lambda name: str(bin_dir / name)   # noqa: E731
    pki = work / "pki"
    out = {
        "cohort": [b("spinemet"), "cohort", "--out", str(cohort), "--patients", "24",
                   "--sites", "3", "--seed", "7", "--no-preview"],
        "certs-init": [b("spinemet"), "certs", "init", "--out", str(pki),
                       "--server-name", coordinator, "--sites", ",".join(SITES[:2])],
        "certs-add-site": [b("spinemet"), "certs", "add-site", "--out", str(pki),
                           "--site", SITES[2]],
        "flower-server": [b("flower-server"), "--certs", str(pki / "coordinator"),
                          "--out", str(work / "run"), "--host", coordinator,
                          "--port", str(PORT), "--rounds", str(ROUNDS), "--local-epochs", "1",
                          "--min-sites", "3", "--wait-for-sites", "300",
                          "--round-timeout", "120", "--seed", "5", "--threads", "1"],
    }
    for site in SITES:
        out[f"spinemet-client {site}"] = [
            b("spinemet-client"), "--site", site, "--data", str(cohort / site),
            "--server", f"{coordinator}:{PORT}", "--certs", str(pki / "sites" / site),
            "--cache", str(work / f"cache-{site}"), "--workers", "1", "--threads", "1"]
    return out


class Proc:
    """A command in a namespace, in its own process group, logging to a file."""

    def __init__(self, name: str, cmd: list[str], log: Path):
        self.name, self.log = name, log
        self._fh = open(log, "wb")
        self.p = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env={**os.environ, **ENV},
                                  start_new_session=True)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int | None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait(timeout=10)
        self._fh.close()
        return self.p.returncode


def _json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _rounds(run: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines() if x]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _wait(predicate, timeout: float, what: str, procs: list[Proc], poll: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


PROBE = r"""
import json, socket, ssl, sys, urllib.request, urllib.error
host, fleet, ca, ports = sys.argv[1], int(sys.argv[2]), sys.argv[3], map(int, sys.argv[4:])
out = {"connect": {}}
for port in ports:
    with socket.socket() as s:
        s.settimeout(3)
        out["connect"][port] = s.connect_ex((host, port)) == 0
context = ssl.create_default_context(cafile=ca)
for path in ("/health", "/v1/control/list-runs", "/v1/runtime/pull-messages"):
    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"https://{host}:{fleet}{path}", data=b"" if path != "/health" else None),
                context=context, timeout=10) as r:
            out[path] = r.status
    except urllib.error.HTTPError as exc:
        out[path] = exc.code
print(json.dumps(out))
"""


def _probe(topo: netns.Topology, site: str, ca: Path) -> dict:
    """From ``site``'s namespace: which coordinator ports connect, what the Fleet port
    answers to the Fleet API's health and to the Control / Runtime APIs."""
    ports = sorted({port for _, port in topo.listening()})
    done = subprocess.run([*topo.exec_prefix(site), sys.executable, "-c", PROBE,
                           topo.address("coord"), str(PORT), str(ca), *map(str, ports)],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"probe from {site} failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    result["connect"] = {int(k): v for k, v in result["connect"].items()}
    return result


class PeerWatch(threading.Thread):
    """Samples the coordinator's established Fleet API connections twice a second."""

    def __init__(self, topo: netns.Topology):
        super().__init__(daemon=True)
        self.topo, self.seen, self.halt = topo, {}, threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.5):
            for peer in self.topo.peers(PORT):
                self.seen.setdefault(peer, time.monotonic())


def run(work: Path, bin_dir: Path = Path(sys.executable).parent,
        cohort: Path | None = None) -> dict:
    """The whole test; returns what was observed (see :func:`failures`)."""
    work.mkdir(parents=True, exist_ok=True)
    netns.sweep_stale()
    topo = netns.Topology(list(SITES))
    coordinator = topo.address("coord")
    cohort = cohort or work / "cohort"
    cmds = commands(work, bin_dir, coordinator, cohort)
    steps = ["certs-init", "certs-add-site"] if (cohort / "labels.csv").exists() else \
        ["cohort", "certs-init", "certs-add-site"]
    for step in steps:
        subprocess.run(cmds[step], check=True, env={**os.environ, **ENV},
                       capture_output=True)
    procs: list[Proc] = []
    result: dict = {"addresses": {h: topo.address(h) for h in topo.hosts()},
                    "namespaces": [topo.ns(h) for h in topo.hosts()], "port": PORT,
                    "cut_site": CUT_SITE, "commands": cmds, "work": str(work)}
    run_dir = work / "run"
    watch = PeerWatch(topo)
    try:
        topo.create()
        server = Proc("coordinator", [*topo.exec_prefix("coord"), *cmds["flower-server"]],
                      work / "coordinator.log")
        procs.append(server)
        for site in SITES:
            procs.append(Proc(site, [*topo.exec_prefix(site),
                                     *cmds[f"spinemet-client {site}"]], work / f"{site}.log"))
        watch.start()
        _wait(lambda: _json(run_dir / "status.json", {}).get("message") == "round 1"
              or server.p.poll() is not None, 300, "round 1", procs)
        cut = {"t_round_start": time.monotonic(), "rx_at_cut": topo.bytes_from(CUT_SITE)}
        topo.cut(CUT_SITE)
        cut["t_cut"] = time.monotonic()
        time.sleep(CUT_SECONDS)
        cut["rx_at_restore"] = topo.bytes_from(CUT_SITE)
        topo.restore(CUT_SITE)
        cut["t_restore"] = time.monotonic()
        _wait(lambda: len(_rounds(run_dir)) >= 1 or server.p.poll() is not None, 240,
              "round 1 to end", procs)
        cut["t_round_end"] = time.monotonic()
        cut["rx_at_round_end"] = topo.bytes_from(CUT_SITE)
        result["cut"] = cut
        if server.p.poll() is None:   # the coordinator is up: what can a hospital reach?
            result["listening"] = topo.listening()
            result["probe"] = {s: _probe(topo, s, work / "pki" / "sites" / s / "ca.crt")
                               for s in SITES}
        result["exit_code"] = server.p.wait(timeout=300)
    finally:
        watch.halt.set()
        result["client_exit_codes"] = {p.name: p.stop() for p in reversed(procs)}
        result["logs"] = {p.name: p.tail(60) for p in procs}
        topo.destroy()
        result["left_namespaces"] = [ns for ns in netns.namespaces()
                                     if ns.startswith(topo.tag + "-")]
    result["peers"] = sorted(watch.seen)
    result["rounds"] = _rounds(run_dir)
    result["status"] = _json(run_dir / "status.json", {})
    result["metrics"] = _json(run_dir / "metrics.json", {})
    return result


def failures(r: dict) -> list[str]:
    """What the standalone script checks (the pytest asserts the same, one by one)."""
    out = []
    hospitals = {r["addresses"][s] for s in SITES}
    if r.get("exit_code") != 0 or r["status"].get("state") != "completed":
        out.append(f"flower-server exit {r.get('exit_code')}: {r['status']}")
    if [x["round"] for x in r["rounds"]] != [*range(1, ROUNDS + 1), None]:
        out.append(f"rounds {[x['round'] for x in r['rounds']]}")
    if any(x["aggregated"] != 3 or x["silent"] for x in r["rounds"][:ROUNDS]):
        out.append("a round did not aggregate all three hospitals")
    # (flower-server itself checks its public port at start: its own address may show up)
    if set(r["peers"]) - {r["addresses"]["coord"]} != hospitals:
        out.append(f"coordinator saw peers {r['peers']}, expected {sorted(hospitals)}")
    cut = r.get("cut", {})
    if r["rounds"] and cut:
        up = r["rounds"][0]["bytes_up_per_site"]
        if not (cut["t_round_end"] > cut["t_restore"] and cut["rx_at_restore"] == cut["rx_at_cut"]
                and cut["rx_at_round_end"] - cut["rx_at_restore"] >= up):
            out.append(f"the cut hospital's reply did not arrive after the restore: {cut}")
    for site, probe in r.get("probe", {}).items():
        if [p for p, ok in probe["connect"].items() if ok] != [PORT]:
            out.append(f"{site} reaches coordinator ports {probe['connect']}")
    if r["left_namespaces"]:
        out.append(f"namespaces left: {r['left_namespaces']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, help="work folder [default: a new temporary one]")
    p.add_argument("--bin", type=Path, default=Path(sys.executable).parent,
                   help="folder of spinemet, flower-server, spinemet-client")
    args = p.parse_args(argv)
    reason = netns.why_not()
    if reason:
        print(f"SKIPPED: the multi-host test needs network namespaces: {reason}")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the clean-up
    work = args.work or Path(tempfile.mkdtemp(prefix="smfl-multihost-"))
    result = run(work, args.bin)
    (work / "result.json").write_text(json.dumps(result, indent=1, default=str))
    problems = failures(result)
    for line in problems:
        print(f"FAIL: {line}")
    r1 = result["rounds"][0] if result["rounds"] else {}
    print(f"rounds {[x['round'] for x in result['rounds']]}; peers {result['peers']}; "
          f"round 1 {r1.get('seconds', 0):.1f} s with {CUT_SITE} cut {CUT_SECONDS:.0f} s; "
          f"work {work}")
    print(f"{0 if problems else 1} passed, {1 if problems else 0} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
