"""What ``spinemet-client`` calls final before and while its SuperNode runs: a clock the
coordinator's SuperLink would refuse (found from the coordinator's HTTP ``Date`` before the
SuperNode starts) and Flower's HTTP 401 in the SuperNode's log (clock skew or a bad
signature: retrying never heals it)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from spinemet.client.supernode import (AHEAD_LIMIT_S, BEHIND_LIMIT_S, clock_refusal,
                                       final_refusal, preflight)
from spinemet.common.certs import init_pki
from spinemet.common.processes import free_port


def test_the_limits_are_flowers():
    from flwr.common.constant import SYSTEM_TIME_TOLERANCE, TIMESTAMP_TOLERANCE

    assert AHEAD_LIMIT_S == SYSTEM_TIME_TOLERANCE
    assert BEHIND_LIMIT_S == TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE


def test_clock_refusal_only_when_the_skew_is_certain():
    date = "Sun, 06 Dec 2026 05:30:00 GMT"
    t = 1796535000.0                                # that instant
    assert clock_refusal(date, t) is None
    assert clock_refusal(date, t + 5.9) is None     # the header drops fractions of a second
    assert "61 s ahead" in str(clock_refusal(date, t + 61.2))
    assert clock_refusal(date, t - 300) is None
    behind = clock_refusal(date, t - 400)
    assert "400 s behind" in str(behind) and "NTP" in behind.advice
    assert clock_refusal("not a date", t) is None


def test_a_401_in_the_supernode_log_is_final():
    """The text Flower's SuperNode logs when the SuperLink answers 401 at connection: its own
    prefix and httpx's error message for the status (built by httpx, not copied)."""
    request = httpx.Request("POST", "https://coordinator:9092/v1/fleet/register-node")
    with pytest.raises(httpx.HTTPStatusError) as err:
        httpx.Response(401, request=request).raise_for_status()
    log = ("ERROR :     Exit Code: 300\nFailed to initialize the connection to the "
           f"SuperLink.\n{err.value}\n")
    refusal = final_refusal(log)
    assert refusal is not None and "401" in refusal.reason and "clock" in refusal.advice
    assert final_refusal("INFO : pulled message\n") is None


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    """The coordinator's real Fleet API proxy with its TLS certificate (no SuperLink behind
    it: /health answers 502, with the proxy's Date header)."""
    pki = init_pki(tmp_path_factory.mktemp("pki"), "localhost", ["hospital-a"])
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "spinemet.server.fleet_proxy", "--listen",
                             f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{free_port()}",
                             "--certs", str(pki.root / "coordinator")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ca = pki.root / "sites" / "hospital-a" / "ca.crt"
    deadline = time.monotonic() + 60
    while preflight(f"localhost:{port}", ca, timeout=1, clock=lambda: 0.0) is None:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the fleet proxy did not answer"
        time.sleep(0.2)
    yield f"localhost:{port}", ca
    proc.terminate()
    proc.wait(10)


def test_preflight_refuses_a_clock_the_superlink_would_refuse(coordinator):
    server, ca = coordinator
    assert preflight(server, ca) is None                          # this host's own clock
    ahead = preflight(server, ca, clock=lambda: time.time() + 60)
    assert ahead is not None and "ahead of the coordinator's" in ahead.reason
    behind = preflight(server, ca, clock=lambda: time.time() - 3600)
    assert behind is not None and "behind the coordinator's" in behind.reason
    assert preflight(server, ca, clock=lambda: time.time() - 200) is None   # within Flower's
