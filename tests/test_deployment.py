"""The deployment, with real processes on loopback: ``flower-server`` (SuperLink + Fleet API
proxy + ServerApp) and one ``spinemet-client`` (SuperNode + site worker) per hospital, TLS
and SuperNode authentication on, and the faults a real federation meets.

The coordinator publishes its Fleet API on 127.0.0.2 (standing in for the interface the
hospitals reach); its SuperLink, with the Control API, listens on 127.0.0.1 only. The sites
are the three hospitals of the 24-patient test cohort: enough to exercise every path, too
few for a model to learn from, so these tests assert on the protocol and the numbers it must
reproduce; ``test_deployment_learns.py`` runs the same commands on 180 patients and asserts
that the federation beats chance.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import httpx
import pytest
import torch
from deployment import Procs, assert_completed, copy_cache, rounds, status, wait_for

from spinemet.common.certs import init_pki
from spinemet.common.cohort.writer import read_labels
from spinemet.common.preprocess.runner import preprocess
from spinemet.common.processes import free_port
from spinemet.server.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.deployment

PUBLIC = "127.0.0.2"
RUN_ARGS = ("--rounds", "2", "--local-epochs", "2", "--model", "paper",
            "--min-sites", "3", "--wait-for-sites", "300", "--round-timeout", "300",
            "--seed", "5")


@pytest.fixture(scope="module")
def federation(small_cohort, tmp_path_factory):
    """Three hospitals (data folder, preprocessed cache) and the federation's certificates."""
    root = tmp_path_factory.mktemp("deploy")
    sites = sorted({r["site"] for r in small_cohort.labels})
    caches = {}
    for site in sites:
        data = small_cohort.path / site
        caches[site] = root / f"cache-{site}"
        summary = preprocess(data, caches[site], read_labels(data / "labels.csv"), workers=2)
        assert not summary.failed
    init_pki(root / "pki", f"localhost,{PUBLIC}", sites)
    return {"root": root, "sites": sites, "data": {s: small_cohort.path / s for s in sites},
            "caches": caches, "pki": root / "pki"}


def _clients(procs: Procs, fed, server: str, tag: str, sites=None) -> dict:
    out = {}
    for site in sites or fed["sites"]:
        cache = fed["caches"][site]
        if tag:   # each scenario's SuperNodes keep their own state beside a copy of the cache
            cache = fed["root"] / f"cache-{site}-{tag}"
            if not cache.exists():
                copy_cache(fed["caches"][site], cache)
        out[site] = procs.client(site, fed["data"][site], server,
                                 fed["pki"] / "sites" / site, cache, free_port())
    return out


@pytest.fixture(scope="module")
def happy(federation, tmp_path_factory):
    """An uninterrupted run; while it trains, three sites that must be refused try to join
    and someone on the public address tries the Control API."""
    fed = federation
    root = tmp_path_factory.mktemp("happy")
    procs = Procs(root)
    port = free_port(PUBLIC)
    run = root / "run"
    server = procs.server(run, fed["pki"] / "coordinator", PUBLIC, port, *RUN_ARGS)
    clients = _clients(procs, fed, f"{PUBLIC}:{port}", "happy")
    try:
        wait_for(lambda: status(run).get("message", "").startswith("round"), 400,
                 "training to start", [server, *clients.values()])
        bad = _bad_clients(procs, fed, f"{PUBLIC}:{port}", root)
        outcome = {name: (proc.wait(240), proc.text()) for name, proc in bad.items()}
        control = _control_from_outside(run, port, fed)
        code = server.wait(900)
        result = {"run": run, "code": code, "server_log": server.text(), "bad": outcome,
                  "control": control, "fed": fed}
    finally:
        procs.close()
    return result


def _bad_clients(procs: Procs, fed, server: str, root) -> dict:
    site = fed["sites"][0]
    data = fed["data"][site]
    # (1) a key the coordinator never enrolled, in an otherwise valid site folder
    stranger = init_pki(root / "other-keys", "localhost", [site]).sites[site].folder
    unenrolled = root / "unenrolled"
    shutil.copytree(fed["pki"] / "sites" / site, unenrolled)
    for name in ("site_auth_key", "site_auth_key.pub"):
        (unenrolled / name).unlink()
        shutil.copy2(stranger / name, unenrolled / name)
    # (2) a folder of another federation (another CA)
    other_ca = init_pki(root / "other-federation", "localhost", [site]).sites[site].folder
    bad = {}
    for tag, certs in (("unenrolled", unenrolled), ("wrong-ca", other_ca), ("plaintext", None)):
        cache = copy_cache(fed["caches"][site], root / f"cache-{tag}")
        bad[tag] = procs.client(site, data, server, certs, cache, free_port(),
                                "--max-wait-time", "60")
    return bad


def _control_from_outside(run, port, fed) -> dict:
    """The Control API through the public port, and the SuperLink's own port from the public
    address: neither may work."""
    from flwr.proto.control_pb2 import ListNodesRequest
    from flwr.supercore.control import ControlHttpClient

    ca = (fed["pki"] / "coordinator" / "ca.crt").read_bytes()
    out = {}
    client = ControlHttpClient.from_server_address(server_address=f"{PUBLIC}:{port}",
                                                   insecure=False, root_certificates=ca,
                                                   interceptors=[])
    try:
        client.ListNodes(ListNodesRequest())
        out["public"] = "answered"
    except httpx.HTTPStatusError as exc:
        out["public"] = exc.response.status_code
    for path in ("/v1/control/register-node", "/v1/control/start-run", "/v1/runtime/pull-messages"):
        r = httpx.post(f"https://{PUBLIC}:{port}{path}", content=b"x",
                       verify=str(fed["pki"] / "coordinator" / "ca.crt"), timeout=10)
        out[path] = r.status_code
    address = json.loads((run / "superlink" / "control.json").read_text())["address"]
    internal = int(address.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.settimeout(3)
        out["internal-from-public"] = s.connect_ex((PUBLIC, internal))
    with socket.socket() as s:
        s.settimeout(3)
        out["internal-from-loopback"] = s.connect_ex(("127.0.0.1", internal))
    return out


def test_three_sites_with_tls_and_enrolment_complete(happy, small_cohort):
    run = happy["run"]
    assert_completed(run, happy["code"], happy["server_log"])
    for name in ("model.pt", "metrics.json", "report.md", "accuracy_per_round.png",
                 "confusion_matrix.png", "serverapp.log"):
        assert (run / name).is_file(), name
    assert len(list((run / "checkpoints").glob("round-*.pt"))) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    from spinemet.common.dataset import split_patients
    n_test = sum(v == "test" for v in split_patients(small_cohort.labels).values())
    assert metrics["n_test"] == n_test          # every site's held-out patients, pooled
    cm = metrics["confusion_matrix"]
    assert sum(map(sum, cm)) == n_test and metrics["accuracy"] == pytest.approx(
        sum(cm[i][i] for i in range(3)) / n_test)


def test_the_deployment_computes_what_the_in_process_loop_computes(happy, tmp_path):
    """Same sites, settings and seeds through the in-process grid: the same weights. TLS,
    the proxy, the SuperNodes and the site workers add transport, not arithmetic."""
    from fedgrid import InProcessGrid

    from spinemet.server.app import run_federation
    from spinemet.server.settings import Settings

    fed = happy["fed"]
    nodes = {2 ** 63 + i: {"site": s, "cache-path": str(fed["caches"][s])}
             for i, s in enumerate(fed["sites"])}
    args = dict(zip(RUN_ARGS[::2], RUN_ARGS[1::2]))
    settings = Settings(out_dir=str(tmp_path / "run"), num_rounds=int(args["--rounds"]),
                        local_epochs=int(args["--local-epochs"]), model=args["--model"],
                        min_sites=3, seed=int(args["--seed"]), wait_for_sites=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                     # as the site workers ran
    try:
        t = [0.0]
        run_federation(InProcessGrid(nodes), settings, clock=lambda: t[0],
                       sleep=lambda s: t.__setitem__(0, t[0] + s))
    finally:
        torch.set_num_threads(threads)
    a = load_checkpoint(latest_checkpoint(happy["run"]))["weights"]
    b = load_checkpoint(latest_checkpoint(tmp_path / "run"))["weights"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert json.loads((happy["run"] / "metrics.json").read_text())["confusion_matrix"] == \
        json.loads((tmp_path / "run" / "metrics.json").read_text())["confusion_matrix"]


def test_unenrolled_wrong_ca_and_plaintext_sites_are_refused_with_the_reason(happy):
    bad = happy["bad"]
    code, text = bad["unenrolled"]
    assert code == 3 and "does not know this site's key" in text and "enrol" in text
    code, text = bad["wrong-ca"]
    assert code == 3 and "certificate is not trusted" in text
    code, text = bad["plaintext"]
    assert code == 3 and "speaks TLS" in text and "drop --insecure" in text
    # and the run did not notice them
    assert all(r["aggregated"] == 3 and not r["excluded"] for r in rounds(happy["run"])[:2])


def test_enrolment_and_run_submission_are_refused_from_outside(happy):
    c = happy["control"]
    assert c["public"] == 403
    assert c["/v1/control/register-node"] == 403 and c["/v1/control/start-run"] == 403
    assert c["/v1/runtime/pull-messages"] == 403
    assert c["internal-from-public"] != 0       # the SuperLink is bound to 127.0.0.1 only
    assert c["internal-from-loopback"] == 0


def test_a_site_killed_mid_round_and_a_site_sending_nan_weights(federation, tmp_path):
    """Three sites and a fourth running modified code (its train replies carry NaN
    weights, ``tests/faulty_site``); --min-sites 2. One of the three is SIGKILLed during
    round 1: its rounds time out, the NaN replies are excluded with the reason, and the run
    completes on the two good sites."""
    from spinemet.common.certs import add_site

    fed = federation
    pki = tmp_path / "pki"
    shutil.copytree(fed["pki"], pki)
    add_site(pki, "hospital-x")                   # enrolled like any site
    procs = Procs(tmp_path)
    port = free_port(PUBLIC)
    run = tmp_path / "run"
    server = procs.server(run, pki / "coordinator", PUBLIC, port, "--rounds", "2",
                          "--local-epochs", "1", "--min-sites", "2", "--wait-for-sites", "300",
                          "--round-timeout", "30", "--seed", "5")
    try:
        clients = _clients(procs, fed, f"{PUBLIC}:{port}", "kill")
        faulty_cache = tmp_path / "cache-faulty"
        copy_cache(fed["caches"][fed["sites"][0]], faulty_cache)
        faulty = procs.client("hospital-x", fed["data"][fed["sites"][0]], f"{PUBLIC}:{port}",
                              pki / "sites" / "hospital-x", faulty_cache, free_port(),
                              env={"PYTHONPATH": str(Path(__file__).parent / "faulty_site"),
                                   "SPINEMET_TEST_FAULT": "nan"})
        wait_for(lambda: status(run).get("message") == "round 1", 400, "round 1",
                 [server, faulty, *clients.values()])
        victim = clients[fed["sites"][2]]
        victim.kill()                        # SIGKILL: SuperNode and worker die with it
        assert server.wait(600) == 0, server.text()[-3000:]
    finally:
        procs.close()
    rows = rounds(run)
    assert status(run)["state"] == "completed"
    assert [r["round"] for r in rows] == [1, 2, None]
    for r in rows[:2]:                       # the NaN site: sampled, replied, excluded
        assert r["aggregated"] == r["sampled"] - 1 - r["silent"], r
        assert len(r["excluded"]) == 1 and "NaN or Inf" in r["excluded"][0], r
    assert any(r["silent"] == 1 and r["aggregated"] == 2 for r in rows[:2]), rows
    log = (run / "serverapp.log").read_text()
    assert "did not reply" in log and "excluded:" in log and "holds NaN or Inf" in log


def test_a_killed_coordinator_resumes_and_ends_with_the_same_weights(federation, happy,
                                                                      tmp_path):
    fed = federation
    procs = Procs(tmp_path)
    port = free_port(PUBLIC)
    run = tmp_path / "run"
    server = procs.server(run, fed["pki"] / "coordinator", PUBLIC, port, *RUN_ARGS)
    try:
        clients = _clients(procs, fed, f"{PUBLIC}:{port}", "resume")
        wait_for(lambda: len(rounds(run)) >= 1, 600, "round 1 to end",
                 [server, *clients.values()])
        server.kill()                        # SIGKILL the coordinator mid-run
        server.wait(30)
        first = json.loads((run / "superlink" / "control.json").read_text())["address"]
        wait_for(lambda: _port_free(port), 60, "the public port to be released")
        resumed = procs.resume(run)
        assert resumed.wait(900) == 0, resumed.text()[-3000:]
    finally:
        procs.close()
    assert status(run)["state"] == "completed"
    a = load_checkpoint(latest_checkpoint(happy["run"]))
    b = load_checkpoint(latest_checkpoint(run))
    assert a["round"] == b["round"] == 2
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), name
    assert "resuming after round" in (run / "serverapp.log").read_text()
    # nothing of either coordinator is left running (a SIGKILLed coordinator's ServerApp
    # can outlive its SuperLink; the resumed coordinator ends it)
    from spinemet.server.superlink import reap_orphans
    second = json.loads((run / "superlink" / "control.json").read_text())["address"]
    assert reap_orphans(first) == [] and reap_orphans(second) == []


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds
        try:
            s.bind((PUBLIC, port))
            return True
        except OSError:
            return False
