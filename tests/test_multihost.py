"""The multi-host test (deploy/multihost.py): a coordinator and three hospitals, each in its
own Linux network namespace with its own address on a private bridge, the real commands
over TLS with site enrolment, hospital-c's link cut for 15 s during round 1 and restored.

Needs root and iproute2 (skipped, with the reason, otherwise). About 2 minutes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
sys.path.insert(0, str(DEPLOY))
import multihost  # noqa: E402
import netns  # noqa: E402

WHY_NOT = netns.why_not()
pytestmark = [pytest.mark.multihost,
              pytest.mark.skipif(WHY_NOT is not None,
                                 reason=f"multi-host test needs network namespaces: {WHY_NOT}")]


@pytest.fixture(scope="module")
def result(small_cohort, tmp_path_factory):
    return multihost.run(tmp_path_factory.mktemp("multihost"), cohort=small_cohort.path)


def _log(result, name):
    return f"\n--- {name}\n{result['logs'].get(name, '')}"


def test_the_run_completes_with_every_round_and_the_pooled_metrics(result, small_cohort):
    assert result["exit_code"] == 0, _log(result, "coordinator")
    assert result["status"]["state"] == "completed"
    rows = result["rounds"]
    assert [r["round"] for r in rows] == [1, 2, None]
    assert [(r["sampled"], r["aggregated"], r["silent"], r["excluded"]) for r in rows[:2]] == \
        [(3, 3, 0, [])] * 2
    from spinemet.common.dataset import split_patients
    n_test = sum(v == "test" for v in split_patients(small_cohort.labels).values())
    metrics = result["metrics"]
    cm = metrics["confusion_matrix"]
    assert metrics["n_test"] == n_test and sum(map(sum, cm)) == n_test
    assert metrics["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(3)) / n_test)
    assert multihost.failures(result) == []


def test_each_hospital_is_seen_by_the_coordinator_at_its_own_address(result):
    addresses = result["addresses"]
    hospitals = [addresses[s] for s in multihost.SITES]
    assert len(set(hospitals)) == 3 and addresses["coord"] not in hospitals
    # apart from flower-server's own check of its public port at start
    assert sorted(set(result["peers"]) - {addresses["coord"]}) == sorted(hospitals)


def test_the_cut_hospitals_reply_arrives_only_after_its_link_is_restored(result):
    cut, rows = result["cut"], result["rounds"]
    assert cut["t_restore"] - cut["t_cut"] >= multihost.CUT_SECONDS
    assert cut["rx_at_restore"] == cut["rx_at_cut"]      # not one byte crossed while cut
    sent_after = cut["rx_at_round_end"] - cut["rx_at_restore"]
    assert sent_after >= rows[0]["bytes_up_per_site"] > 50_000   # its reply: weights and all
    assert cut["t_round_end"] > cut["t_restore"]         # round 1 waited for it
    assert rows[0]["seconds"] >= multihost.CUT_SECONDS > rows[1]["seconds"]
    assert rows[0]["aggregated"] == 3 and rows[0]["silent"] == 0
    supernode = Path(result["work"]) / f"cache-{multihost.CUT_SITE}" / "supernode.log"
    assert "Connection attempt failed" in supernode.read_text(errors="replace")


def test_only_the_fleet_api_port_is_reachable_from_the_hospitals(result):
    listening = result["listening"]
    coordinator = result["addresses"]["coord"]
    # the published proxy and, on loopback only, the SuperLink: both must be there to check
    assert [coordinator, multihost.PORT] in map(list, listening)
    internal = [p for a, p in listening if a == "127.0.0.1"]
    assert internal
    for site, probe in result["probe"].items():
        assert probe["connect"] == {p: p == multihost.PORT for _, p in listening}, site
        assert probe["/health"] == 200
        assert probe["/v1/control/list-runs"] == 403 == probe["/v1/runtime/pull-messages"]


def test_nothing_is_left_behind(result):
    assert result["left_namespaces"] == []
    assert not [ns for ns in netns.namespaces() if ns.startswith(f"{netns.PREFIX}{os.getpid()}-")]
    assert _processes_mentioning(result["work"]) == []


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if text in cmdline and proc.name.isdigit() and int(proc.name) != os.getpid():
            found.append(cmdline)
    return found


def test_a_failing_run_still_removes_its_namespaces_and_processes(tmp_path, monkeypatch,
                                                                  small_cohort):
    """Stand-in commands that hang in their namespaces, then a failure: all are removed."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("flower-server", "spinemet-client"):
        (fake / name).write_text("#!/bin/sh\nexec sleep 600\n")
        (fake / name).chmod(0o755)
    (fake / "spinemet").symlink_to(Path(sys.executable).parent / "spinemet")

    def boom(*_a, **_k):
        raise RuntimeError("simulated failure while waiting for round 1")

    monkeypatch.setattr(multihost, "_wait", boom)
    created = []
    monkeypatch.setattr(netns.Topology, "create", _recording(netns.Topology.create, created))
    with pytest.raises(RuntimeError, match="simulated failure"):
        multihost.run(tmp_path / "w", bin_dir=fake, cohort=small_cohort.path)
    assert len(created) == 1 and len(created[0]) == 5    # the switch and four hosts existed
    assert not set(created[0]) & set(netns.namespaces())
    assert _processes_mentioning(str(fake)) == []


def _recording(create, sink):
    def wrapper(self):
        out = create(self)
        sink.append(list(self.created))
        return out
    return wrapper


def test_a_killed_runs_leftovers_are_removed_by_the_next_run():
    """A namespace of a dead run, with a process still in it: swept away."""
    dead = subprocess.Popen(["true"])
    dead.wait()                                          # a pid that no longer exists
    ns = f"{netns.PREFIX}{dead.pid}-coord"
    netns.ip("netns", "add", ns)
    orphan = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"],
                              start_new_session=True)
    try:
        netns.sweep_stale()
        assert ns not in netns.namespaces()
        assert orphan.wait(timeout=10) == -9             # SIGKILLed by the sweep
    finally:
        netns.delete(ns)
        if orphan.poll() is None:
            orphan.kill()
