"""Linux network namespaces for the multi-host test: one "host" per party on a private link.

A switch namespace holds a bridge; every host namespace (coordinator, each hospital) gets a
veth pair whose outer end is a port of that bridge, its own address on ``SUBNET``/24, and
``lo`` up. No namespace has a default route, so no packet can leave them. Cutting a
hospital's link sets its bridge port down (the cable is pulled on the network side: the
hospital's packets are dropped, nothing tells its TCP stack).

Every name starts with ``smfl-<pid>-``: :func:`sweep_stale` removes the namespaces (and the
processes inside them) of an earlier run whose process is gone.

Needs root and iproute2 (``ip``, ``ss``); stdlib only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

PREFIX = "smfl-"
SUBNET = "10.99.0"
_STALE = re.compile(rf"^{PREFIX}(\d+)-")


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list", check=False).splitlines()
            if line.strip()]


def why_not() -> str | None:
    """None when this process can create network namespaces, else the reason it cannot."""
    if os.name != "posix" or not os.path.exists("/proc/self/ns/net"):
        return "not Linux: network namespaces need Linux"
    if os.geteuid() != 0:
        return f"not root (uid {os.geteuid()}): `ip netns add` needs root"
    for tool in ("ip", "ss"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def kill_inside(ns: str) -> list[int]:
    """SIGKILL every process living in namespace ``ns``."""
    pids = [int(p) for p in ip("netns", "pids", ns, check=False).split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def delete(ns: str) -> None:
    kill_inside(ns)
    ip("netns", "del", ns, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def sweep_stale() -> list[str]:
    """Remove the namespaces (and processes) left by earlier runs that died."""
    gone = []
    for ns in namespaces():
        match = _STALE.match(ns)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            delete(ns)
            gone.append(ns)
    return gone


@dataclass
class Topology:
    """A coordinator and hospitals, each in its own namespace, on one bridge."""

    hospitals: list[str]
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    created: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def hosts(self) -> list[str]:
        return ["coord", *self.hospitals]

    def address(self, host: str) -> str:
        return f"{SUBNET}.{1 if host == 'coord' else 11 + self.hospitals.index(host)}"

    def port(self, host: str) -> str:
        """The bridge port (outer veth end, in the switch namespace) of ``host``."""
        return "p-coord" if host == "coord" else f"p-{self.hospitals.index(host)}"

    def create(self) -> "Topology":
        for ns in (self.switch, *map(self.ns, self.hosts())):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts():
            ns, port = self.ns(host), self.port(host)
            ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    def cut(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", self.port(host), "down")

    def restore(self, host: str) -> None:
        ip("-n", self.switch, "link", "set", self.port(host), "up")

    def bytes_from(self, host: str) -> int:
        """Bytes the bridge received from ``host`` (what the host sent into the network)."""
        info = json.loads(ip("-n", self.switch, "-j", "-s", "link", "show", self.port(host)))
        return int(info[0]["stats64"]["rx"]["bytes"])

    def peers(self, port: int) -> set[str]:
        """Remote addresses of the TCP connections established to ``port`` in the
        coordinator's namespace: who the coordinator sees."""
        out = subprocess.run(["ss", "-N", self.ns("coord"), "-Htn", "state", "established",
                              f"( sport = :{port} )"], capture_output=True, text=True).stdout
        return {line.split()[-1].rsplit(":", 1)[0].strip("[]")
                for line in out.splitlines() if line.strip()}

    def listening(self) -> list[tuple[str, int]]:
        """(address, port) of every TCP listener in the coordinator's namespace."""
        out = subprocess.run(["ss", "-N", self.ns("coord"), "-Htln"], capture_output=True,
                             text=True).stdout
        found = set()
        for line in out.splitlines():
            local = line.split()[-2]
            addr, _, port = local.rpartition(":")
            found.add((addr.strip("[]"), int(port)))
        return sorted(found)

    def destroy(self) -> None:
        for ns in reversed(self.created):
            delete(ns)
        self.created.clear()
