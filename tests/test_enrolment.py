"""Enrolment against a real SuperLink (``flower-superlink`` with TLS and SuperNode
authentication, its database on disk): ``flower-server`` registers exactly the keys of
``enrolled.json`` at every start, so revoking a site is deleting its key and restarting,
in the same run folder (deploy/README.md, "Revoking a site")."""

from __future__ import annotations

import json

import pytest

from spinemet.common.certs import init_pki, load_enrolled_keys
from spinemet.common.processes import free_port
from spinemet.server.superlink import Control, SuperLinkPaths, start_superlink, wait_healthy

pytestmark = pytest.mark.deployment


def _start(paths: SuperLinkPaths, certs):
    port = free_port()
    child = start_superlink(paths, port, certs, threads=1)
    wait_healthy(f"127.0.0.1:{port}", certs / "ca.crt", child)
    return child, Control(f"127.0.0.1:{port}", certs / "ca.crt")


def _active(control: Control) -> dict[str, int]:
    return {n.name: int(n.node_id) for n in control.nodes() if not n.unregistered_at}


def test_a_key_removed_from_enrolled_json_is_unregistered_at_the_next_start(tmp_path):
    pki = init_pki(tmp_path / "pki", "localhost", ["hospital-a", "hospital-b"])
    certs = pki.root / "coordinator"
    paths = SuperLinkPaths(tmp_path / "run" / "superlink")

    child, control = _start(paths, certs)
    try:
        keys = {s: k.public_key for s, k in load_enrolled_keys(certs).items()}
        assert control.enrol_exactly(keys) == {"hospital-a": "enrolled",
                                               "hospital-b": "enrolled"}
        before = _active(control)
        assert sorted(before) == ["hospital-a", "hospital-b"]
    finally:
        child.stop()

    # the operator revokes hospital-b: its line in enrolled.json and its .pub go
    enrolled = certs / "enrolled.json"
    doc = json.loads(enrolled.read_text())
    pubs = [p for p in certs.rglob("*.pub") if "hospital-b" in p.name]
    assert pubs, "the coordinator folder holds hospital-b's public key"
    for p in pubs:
        p.unlink()
    del doc["hospital-b"]                         # {site: {public_key, fingerprint}}
    enrolled.write_text(json.dumps(doc, indent=1) + "\n")

    child, control = _start(paths, certs)          # the same database: the same run folder
    try:
        keys = {s: k.public_key for s, k in load_enrolled_keys(certs).items()}
        assert list(keys) == ["hospital-a"]
        outcome = control.enrol_exactly(keys)
        assert outcome == {"hospital-a": "already enrolled",
                           f"-{before['hospital-b']}": "unregistered (hospital-b)"}
        assert _active(control) == {"hospital-a": before["hospital-a"]}
        assert control.enrol_exactly(keys) == {"hospital-a": "already enrolled"}  # idempotent
    finally:
        child.stop()

