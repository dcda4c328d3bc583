"""``flower-server``'s work: the coordinator's processes, enrolment, one run, clean-up.

1. The SuperLink on 127.0.0.1:<internal port> (TLS, SuperNode authentication, database in
   ``RUN/superlink/state.db``).
2. The enrolled site keys registered with it (``coordinator/enrolled.json``; on resume they
   are already in the database).
3. The Fleet API proxy on the public ``--host:--port`` (:mod:`.fleet_proxy`): the only
   thing reachable from outside.
4. The run submitted through the Control API on loopback (the bundle holds only
   ``pyproject.toml``, :mod:`.fab`), its status polled until it ends; the ServerApp's own
   ``RUN/status.json`` and ``rounds.jsonl`` feed the progress display.
5. Everything stopped, also on Ctrl-C (the run is stopped first) and when this process is
   killed (the children die with it: :class:`~spinemet.common.processes.Child`).

Options of the first start are kept in ``RUN/deployment.json``; ``--resume RUN`` reuses them
(same public port, so the sites' SuperNodes reconnect by themselves).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..common.certs import CoordinatorFiles, PkiError, load_enrolled_keys
from ..common.processes import Child, flower_env, free_port, port_open
from .fab import build_fab
from .superlink import (Control, RunFailed, SuperLinkError, SuperLinkPaths, follow_run,
                        reap_orphans, start_superlink, wait_healthy)

log = logging.getLogger("spinemet.server")


class DeploymentError(RuntimeError):
    """The coordinator cannot start or the run failed; the message says what to do."""


@dataclass
class DeploymentOptions:
    out: str
    certs: str | None                 # the coordinator folder; None = --insecure
    host: str = "0.0.0.0"
    port: int = 9092
    run_config: dict = field(default_factory=dict)
    threads: int | None = None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "DeploymentOptions":
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise DeploymentError(f"{path} not found: --resume needs the folder of a run "
                                  "that flower-server started") from None


def check_coordinator_folder(certs: Path) -> CoordinatorFiles:
    files = CoordinatorFiles.at(certs)
    missing = [p.name for p in (files.certificate, files.key, files.ca_certificate)
               if not p.is_file()]
    if missing:
        raise DeploymentError(f"{certs}: missing {', '.join(missing)}; give the coordinator "
                              "folder written by `spinemet certs init` (CERTS/coordinator)")
    if (certs / "ca.key").exists():
        log.warning("%s holds ca.key: the CA key belongs offline, not on the coordinator",
                    certs)
    return files


class Deployment:
    def __init__(self, options: DeploymentOptions, on_round: Callable[[dict], None] | None = None):
        self.options = options
        self.out = Path(options.out).resolve()
        self.on_round = on_round
        self.certs = Path(options.certs).resolve() if options.certs else None
        self.paths = SuperLinkPaths(self.out / "superlink")
        self.children: list[Child] = []
        self.control: Control | None = None
        self.run_id: int | None = None

    # -- start-up --------------------------------------------------------------------------
    def start(self) -> None:
        if self.certs is not None:
            check_coordinator_folder(self.certs)
            try:
                enrolled = load_enrolled_keys(self.certs)
            except PkiError as exc:
                raise DeploymentError(f"{self.certs}: {exc}") from None
        else:
            enrolled = {}
        if port_open(self.options.host if self.options.host not in ("0.0.0.0", "::")
                     else "127.0.0.1", self.options.port):
            raise DeploymentError(f"port {self.options.port} is in use on {self.options.host}: "
                                  "stop what holds it (an earlier flower-server?) or choose "
                                  "another --port")
        self.out.mkdir(parents=True, exist_ok=True)
        self._reap_previous()
        internal = free_port()
        self.internal = f"127.0.0.1:{internal}"
        superlink = start_superlink(self.paths, internal, self.certs, self.options.threads)
        self.children.append(superlink)
        ca = self.certs / "ca.crt" if self.certs else None
        try:
            seconds = wait_healthy(f"127.0.0.1:{internal}", ca, superlink)
        except SuperLinkError as exc:
            raise DeploymentError(str(exc)) from None
        log.info("SuperLink up on 127.0.0.1:%d in %.1f s (database %s)", internal, seconds,
                 self.paths.database)
        self.control = Control(f"127.0.0.1:{internal}", ca)
        # For the operator's own `flwr` CLI on this host (flwr ls / log / stop).
        (self.paths.root / "control.json").write_text(json.dumps(
            {"address": f"127.0.0.1:{internal}", "root-certificates": str(ca) if ca else None,
             "insecure": ca is None}, indent=1) + "\n")
        if self.certs is not None:
            outcome = self.control.enrol_exactly({s: k.public_key for s, k in enrolled.items()})
            for site, what in outcome.items():
                log.info("site %s: %s%s", site.lstrip("-"), what,
                         f" ({enrolled[site].fingerprint})" if site in enrolled else "")
        self._start_proxy(internal)

    def _start_proxy(self, internal: int) -> None:
        cmd = [sys.executable, "-m", "spinemet.server.fleet_proxy",
               "--listen", f"{self.options.host}:{self.options.port}",
               "--upstream", f"127.0.0.1:{internal}"]
        if self.certs is not None:
            cmd += ["--certs", str(self.certs)]
        proxy = Child("fleet-proxy", cmd, self.paths.root / "fleet-proxy.log",
                      env=flower_env(self.paths.flwr_home, 1))
        self.children.append(proxy)
        local = "127.0.0.1" if self.options.host in ("0.0.0.0", "::") else self.options.host
        ca = self.certs / "ca.crt" if self.certs else None
        try:
            wait_healthy(f"{local}:{self.options.port}", ca, proxy, timeout=60)
        except SuperLinkError as exc:
            raise DeploymentError(f"the Fleet API proxy did not start: {exc}") from None
        log.info("Fleet API published on %s:%d (%s); Control API on loopback only",
                 self.options.host, self.options.port, "TLS" if ca else "PLAINTEXT")

    def _reap_previous(self) -> None:
        """A coordinator killed earlier can leave its ServerApp behind: end it."""
        try:
            previous = json.loads((self.paths.root / "control.json").read_text())["address"]
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            return
        killed = reap_orphans(previous)
        if killed:
            log.warning("ended %d process(es) left by the previous coordinator of this run "
                        "(%s)", len(killed), previous)

    # -- the run ----------------------------------------------------------------------------
    def submit(self) -> int:
        fab, digest = build_fab()
        overrides = {**self.options.run_config, "out-dir": str(self.out)}
        self.run_id = self.control.start_run(fab, digest, overrides)
        log.info("run %d submitted", self.run_id)
        return self.run_id

    def wait(self, poll: float = 0.5) -> dict:
        """Follow the run until Flower says it finished; the ServerApp's status decides."""
        try:
            return follow_run(self.control, self.run_id, self.out, self.children,
                              self.on_round, poll)
        except RunFailed as exc:
            raise DeploymentError(str(exc)) from None

    def stop(self) -> None:
        if self.control is not None and self.run_id is not None:
            try:
                if self.control.status(self.run_id)[0] != "finished":
                    self.control.stop_run(self.run_id)
                    log.info("run %d stopped", self.run_id)
            except Exception:
                pass
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        if getattr(self, "internal", None):
            reap_orphans(self.internal)
