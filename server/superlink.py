"""The coordinator's Flower SuperLink: started on loopback, driven through its Control API.

:func:`start_superlink` runs ``flower-superlink`` bound to 127.0.0.1 with TLS, SuperNode
authentication, a persistent database in the run folder and runtime dependency installation
off. :class:`Control` is the Control API client the ``flwr`` CLI uses
(``flwr.supercore.control.ControlHttpClient``), for enrolment (``RegisterNode``, as
``flwr supernode register``), run submission (``StartRun``, as ``flwr run``), the run's
status (``ListRuns``: ``flwr run`` exits 0 even when the ServerApp failed, the status says
``finished:failed``), its log and ``StopRun``.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

from ..common.processes import Child, flower_bin, flower_env

log = logging.getLogger("spinemet.server")


class SuperLinkError(RuntimeError):
    pass


class RunFailed(RuntimeError):
    """The run ended failed (or a process it needs died); the message says where to look."""


@dataclass
class SuperLinkPaths:
    root: Path            # RUN/superlink

    @property
    def database(self) -> Path:
        return self.root / "state.db"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def log(self) -> Path:
        return self.root / "superlink.log"


def start_superlink(paths: SuperLinkPaths, port: int, certs: Path | None,
                    threads: int | None = None, simulation: bool = False,
                    env: dict | None = None) -> Child:
    """``flower-superlink`` on 127.0.0.1:``port`` (TLS + auth unless ``certs`` is None).

    ``simulation``: Flower's simulation runtime (``--simulation``): a run's ServerApp and
    its virtual SuperNodes' ClientApps run in one ``flwr-simulation`` process on Ray."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.flwr_home.mkdir(parents=True, exist_ok=True)
    cmd = [flower_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
           "--database", str(paths.database), "--disable-runtime-dependency-installation"]
    if simulation:
        cmd += ["--simulation"]
    if certs is not None:
        cmd += ["--ssl-ca-certfile", str(certs / "ca.crt"),
                "--ssl-certfile", str(certs / "server.crt"),
                "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth"]
    else:
        cmd += ["--insecure"]
    return Child("superlink", cmd, paths.log,
                 env={**flower_env(paths.flwr_home, threads), **(env or {})}, cwd=paths.root)


def wait_healthy(address: str, ca: Path | None, child: Child | None = None,
                 timeout: float = 90.0) -> float:
    """Seconds until ``GET /health`` answers 200; raises with the log's tail otherwise."""
    t0 = time.monotonic()
    url = f"{'https' if ca else 'http'}://{address}/health"
    verify = ssl.create_default_context(cafile=str(ca)) if ca else False
    while time.monotonic() - t0 < timeout:
        if child is not None and not child.alive():
            raise SuperLinkError(f"the {child.name} exited at start:\n{_tail(child)}")
        try:
            if httpx.get(url, verify=verify, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SuperLinkError(f"{child.name if child else 'the SuperLink'} did not answer {url} within {timeout:.0f} s"
                         + (f":\n{_tail(child)}" if child else ""))


def _tail(child: Child, lines: int = 15) -> str:
    return "\n".join(child.text().splitlines()[-lines:])


def reap_orphans(address: str) -> list[int]:
    """Kill Flower processes still attached to the SuperLink at ``address`` (Linux /proc).

    Flower starts the ServerApp through ``flower-superexec`` in process groups of their own;
    when the SuperLink dies abruptly (a SIGKILLed coordinator), a ``flwr-serverapp`` can
    outlive it, retrying a dead address. ``flower-server`` calls this when it stops and, for
    ``--resume``, for the previous SuperLink's address, so no stale ServerApp touches the
    run folder."""
    killed = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--runtime-api-address" in args and address.encode() in args:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except OSError:
                pass
    return killed


class Control:
    """The SuperLink's Control API (loopback only: it is never published)."""

    def __init__(self, address: str, ca: Path | None):
        from flwr.supercore.control import ControlHttpClient

        self.client = ControlHttpClient.from_server_address(
            server_address=address, insecure=ca is None,
            root_certificates=ca.read_bytes() if ca else None, interceptors=[])

    def register(self, public_key_line: str, name: str) -> tuple[int | None, bool]:
        """(node id, newly registered); an already-enrolled key is fine (resume)."""
        from cryptography.hazmat.primitives import serialization
        from flwr.proto.control_pb2 import RegisterNodeRequest
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        key = serialization.load_ssh_public_key(public_key_line.encode())
        try:
            res = self.client.RegisterNode(RegisterNodeRequest(
                public_key=public_key_to_bytes(key), name=name))
            return int(res.node_id), True
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 412 and "already in use" in exc.response.text:
                return None, False
            raise

    def nodes(self) -> list:
        """NodeInfo messages of every node the SuperLink knows (status, name, public key)."""
        from flwr.proto.control_pb2 import ListNodesRequest

        return list(self.client.ListNodes(ListNodesRequest()).nodes_info)

    def unregister(self, node_id: int) -> None:
        from flwr.proto.control_pb2 import UnregisterNodeRequest

        self.client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))

    def enrol_exactly(self, keys: dict[str, str]) -> dict[str, str]:
        """Register each ``{site: OpenSSH public key line}``; unregister every other node
        (a key removed from ``enrolled.json`` since the database was made). Returns
        {site: 'enrolled' | 'already enrolled'} and {'-<node id>': 'unregistered'}."""
        from cryptography.hazmat.primitives import serialization
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        done = {}
        wanted = set()
        for site, line in sorted(keys.items()):
            wanted.add(public_key_to_bytes(serialization.load_ssh_public_key(line.encode())))
            _, new = self.register(line, site)
            done[site] = "enrolled" if new else "already enrolled"
        for node in self.nodes():
            if node.public_key and node.public_key not in wanted and not node.unregistered_at:
                self.unregister(int(node.node_id))
                done[f"-{node.node_id}"] = f"unregistered ({node.name or 'unnamed'})"
        return done

    def start_run(self, fab: bytes, fab_hash: str, overrides: dict,
                  simulation: dict | None = None) -> int:
        """Submit a run (as ``flwr run``); ``simulation`` is the federation config of a
        simulation SuperLink, e.g. ``{"num_supernodes": 5, "client_resources_num_cpus": 1}``
        (the fields of Flower's ``SimulationConfig``)."""
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.proto.federation_config_pb2 import SimulationConfig
        from flwr.supercore.fab import Fab

        extra = {}
        if simulation is not None:
            extra["override_federation_config"] = SimulationConfig(**simulation)
        res = self.client.StartRun(StartRunRequest(
            fab=fab_to_proto(Fab(fab_hash, fab, {})),
            override_config=user_config_to_proto(overrides), federation="", app_spec="",
            **extra))
        if not res.HasField("run_id"):
            raise SuperLinkError(f"the SuperLink did not accept the run: {res}")
        return int(res.run_id)

    def status(self, run_id: int) -> tuple[str, str, str]:
        """(status, sub-status, details), e.g. ('finished', 'failed', 'ServerApp ...')."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self.client.ListRuns(ListRunsRequest(run_id=run_id))
        run = run_from_proto(res.run_dict[run_id])
        return run.status.status, run.status.sub_status, run.status.details

    def logs(self, run_id: int, after: float = 0.0) -> str:
        from flwr.proto.control_pb2 import StreamLogsRequest

        return "".join(r.log_output for r in self.client.StreamLogs(
            StreamLogsRequest(run_id=run_id, after_timestamp=after)))

    def stop_run(self, run_id: int) -> None:
        from flwr.proto.control_pb2 import StopRunRequest

        self.client.StopRun(StopRunRequest(run_id=run_id))


def follow_run(control: Control, run_id: int, out: Path, children: list[Child],
               on_round: Callable[[dict], None] | None = None, poll: float = 0.5) -> dict:
    """Follow a run until Flower says it finished; the ServerApp's ``status.json`` decides.

    ``flwr run`` would exit 0 on a failed ServerApp: this reads the run's status
    (``finished:completed`` vs ``finished:failed``) and the app's own status file, calls
    ``on_round`` for each new line of ``rounds.jsonl``, keeps the ServerApp's log in
    ``out/serverapp.log`` and raises :class:`RunFailed` with the reason."""
    from .outputs import read_rounds, read_status

    seen = 0
    while True:
        state, sub, details = control.status(run_id)
        rows = read_rounds(out)
        for row in rows[seen:]:
            if on_round:
                on_round(row)
        seen = len(rows)
        if state == "finished":
            break
        for child in children:
            if not child.alive():
                raise RunFailed(f"the {child.name} exited unexpectedly (see {child.log})")
        time.sleep(poll)
    try:
        (out / "serverapp.log").write_text(control.logs(run_id))
    except Exception as exc:   # the log is a convenience; the status is what counts
        log.debug("could not fetch the ServerApp log: %s", exc)
    status = read_status(out)
    if sub != "completed" or status.get("state") != "completed":
        reason = status.get("message") or details or f"Flower status {state}:{sub}"
        raise RunFailed(f"the run failed: {reason} (ServerApp log: {out / 'serverapp.log'})")
    return status
