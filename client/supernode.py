"""The hospital's Flower SuperNode: a pre-flight check, the process, and what its log means.

A SuperNode retries a lost connection by itself (a network blip, a coordinator restart),
which is what a site wants. But some failures never heal, and Flower reports them only as
log text (every Flower error exits with status 1): :func:`final_refusal` reads them and
says what the operator should do, so ``spinemet-client`` can exit at once. A plaintext
SuperNode against a TLS coordinator would even retry forever, so :func:`preflight` tries
the coordinator's TLS first.
"""

from __future__ import annotations

import email.utils
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..common.processes import Child, flower_bin, flower_env
from .worker import key_path, new_key, socket_path

# (log text, reason, what to do), checked in order.
REFUSALS = (
    ("[code: 2004]", "the coordinator does not know this site's key",
     "ask the coordinator's operator to enrol this site (`spinemet certs add-site`, then "
     "restart flower-server), and check --certs points at this site's folder"),
    ("[code: 2001]", "the coordinator requires site authentication",
     "give --certs with this site's folder from `spinemet certs`"),
    ("CERTIFICATE_VERIFY_FAILED", "the coordinator's TLS certificate is not signed by this "
     "site's CA", "check --server and that --certs came from this federation's "
     "`spinemet certs`; never connect to an untrusted coordinator"),
    ("401 Unauthorized", "the coordinator rejected this site's signed requests (HTTP 401: "
     "their timestamp or signature)", "check this host's clock against the coordinator's "
     "(Flower accepts a request signed at most 5 s ahead of or 305 s behind its clock: "
     "enable NTP / chrony on both hosts) and that --certs is this site's folder"),
    ("Exit Code: 303", "insecure mode was asked together with a site key",
     "drop --insecure (TLS is the default)"),
    ("Giving up reconnection", "the coordinator could not be reached within the retry budget",
     "check that flower-server runs and --server HOST:PORT is right, or raise "
     "--max-wait-time"),
)


class Refusal(RuntimeError):
    def __init__(self, reason: str, advice: str):
        self.reason, self.advice = reason, advice
        super().__init__(f"{reason}: {advice}")


def final_refusal(log_text: str) -> Refusal | None:
    for needle, reason, advice in REFUSALS:
        if needle in log_text:
            return Refusal(reason, advice)
    return None


# Flower's SuperLink accepts a SuperNode's signed timestamp when the coordinator's clock
# minus it lies within (-SYSTEM_TIME_TOLERANCE, TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE)
# (flwr.common.constant; flwr/superlink/routers/fleet/node_auth.py).
AHEAD_LIMIT_S, BEHIND_LIMIT_S = 5.0, 305.0


def clock_refusal(date_header: str, local: float) -> Refusal | None:
    """A refusal when this host's clock (``local``, epoch seconds) and the coordinator's
    (its HTTP ``Date`` header, whole seconds) differ more than Flower accepts. The header
    is truncated to the second, so a skew is called only when it is certain."""
    try:
        coordinator = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return None
    skew = local - coordinator          # the coordinator's true time is in [date, date + 1)
    if skew - 1.0 > AHEAD_LIMIT_S:
        where = f"{skew:.0f} s ahead of"
    elif skew < -BEHIND_LIMIT_S:
        where = f"{-skew:.0f} s behind"
    else:
        return None
    return Refusal(f"this host's clock is {where} the coordinator's; Flower refuses a site's "
                   f"signed requests beyond {AHEAD_LIMIT_S:.0f} s ahead or "
                   f"{BEHIND_LIMIT_S:.0f} s behind",
                   "set this host's clock (enable NTP / chrony) and start again")


def _clock_check(host: str, port: int, context: ssl.SSLContext, timeout: float,
                 clock: Callable[[], float]) -> Refusal | None:
    """The coordinator's clock from its ``Date`` header (``GET /health``) against ours."""
    import httpx

    name = f"[{host}]" if ":" in host else host
    try:
        date = httpx.get(f"https://{name}:{port}/health", verify=context,
                         timeout=timeout).headers.get("date")
    except httpx.HTTPError:
        return None
    return clock_refusal(date, clock()) if date else None


def split_address(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--server {server!r}: expected HOST:PORT, e.g. fl.hospital.org:9092")
    return host.strip("[]"), int(port)


def preflight(server: str, ca: Path | None, timeout: float = 5.0,
              clock: Callable[[], float] = time.time) -> Refusal | None:
    """A final refusal the coordinator would give, found before the SuperNode starts.

    TLS against ``ca``: a certificate this site's CA did not sign (or not for this host
    name) is final, and so is a clock the coordinator's SuperLink would refuse (its HTTP
    ``Date`` against ``clock()``). Plaintext (``ca`` None) against a coordinator that speaks
    TLS is final. An unreachable coordinator is not: the SuperNode keeps trying."""
    host, port = split_address(server)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with raw:
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            try:
                with context.wrap_socket(raw, server_hostname=host):
                    pass
            except ssl.SSLCertVerificationError as exc:
                return Refusal("the coordinator's TLS certificate is not trusted "
                               f"({exc.verify_message})",
                               "check --server (the name must be in the coordinator's "
                               "certificate) and that --certs came from this federation's "
                               "`spinemet certs`")
            except (ssl.SSLError, OSError):
                return None
            return _clock_check(host, port, context, timeout, clock)
        try:
            raw.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                        .encode())
            raw.settimeout(timeout)
            answer = raw.recv(64)
        except OSError:
            answer = b""
        if not answer.startswith(b"HTTP/"):
            return Refusal("the coordinator speaks TLS and this site asked for plaintext",
                           "drop --insecure and give --certs with this site's folder")
    return None


@dataclass
class SuperNodeSpec:
    site: str
    server: str
    data: Path
    cache: Path
    certs: Path | None          # the site folder; None = --insecure
    runtime_port: int = 9094
    max_wait_time: float | None = None
    threads: int | None = None
    cache_site: str | None = None
    worker: bool = True          # hand the work to the site worker (:mod:`.worker`)

    def node_config(self) -> str:
        items = {"site": self.site, "data-path": str(self.data.resolve()),
                 "cache-path": str(self.cache.resolve())}
        if self.cache_site:
            items["cache-site"] = self.cache_site
        if self.worker:
            items["worker-socket"] = str(socket_path(self.cache))
            items["worker-key"] = str(key_path(self.cache))
        for key, value in items.items():
            if '"' in value:
                raise ValueError(f"{key} {value!r} holds a double quote, which Flower's "
                                 "node config cannot carry: rename the folder")
        return " ".join(f'{k}="{v}"' for k, v in items.items())

    def command(self) -> list[str]:
        cmd = [flower_bin("flower-supernode"), "--superlink", self.server,
               "--port", str(self.runtime_port), "--node-config", self.node_config()]
        if self.certs is None:
            cmd += ["--insecure"]
        else:
            certs = self.certs.resolve()
            cmd += ["--root-certificates", str(certs / "ca.crt"),
                    "--auth-supernode-private-key", str(certs / "site_auth_key")]
        if self.max_wait_time:
            cmd += ["--max-wait-time", str(self.max_wait_time)]
        return cmd


def start_worker(spec: SuperNodeSpec, log: Path, timeout: float = 120.0) -> Child:
    """The site worker (a fresh key each start); returns once its socket is up."""
    new_key(spec.cache)
    socket_path(spec.cache).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "spinemet.client.worker", "--cache", str(spec.cache.resolve())]
    child = Child(f"worker-{spec.site}", cmd, log, env=flower_env(spec.cache / "flwr-home",
                                                                  spec.threads))
    t0 = time.monotonic()
    while not socket_path(spec.cache).exists():
        if not child.alive() or time.monotonic() - t0 > timeout:
            child.stop()
            raise RuntimeError(f"the site worker did not start (log {log})")
        time.sleep(0.1)
    return child


def start_supernode(spec: SuperNodeSpec, log: Path) -> Child:
    home = spec.cache / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    return Child(f"supernode-{spec.site}", spec.command(), log,
                 env=flower_env(home, spec.threads), cwd=spec.cache)
