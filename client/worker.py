"""The site worker: one long-lived process that does a hospital's training.

Flower starts a fresh ``flwr-clientapp`` process for every message, and importing PyTorch
and the pipeline then loading the site's studies costs seconds each time (8 s measured on
a busy 2-core host). ``spinemet-client`` therefore starts this worker once: it keeps torch
imported and the site's tensors in memory, and the ClientApp (which then imports Flower
alone) hands it each request over a local socket and relays the answer.

The socket is a Unix domain socket in the site's cache folder, and a connection must prove
the random key in ``worker.key`` (mode 0600, ``multiprocessing.connection``'s HMAC
challenge), so only the site's own processes can use it. Requests are
``(kind, node_config, config, arrays)``; answers are ``("ok", arrays, metrics)`` or
``("refused", code, reason)``; errors are logged here, in full, and answered with the fixed
:data:`~spinemet.common.federation.E_INTERNAL` text.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from multiprocessing.connection import Client, Listener
from pathlib import Path

from ..common.federation import E_INTERNAL, SiteRefusal

log = logging.getLogger("spinemet.worker")


def socket_path(cache: Path) -> Path:
    return Path(cache).resolve() / "worker.sock"


def key_path(cache: Path) -> Path:
    return Path(cache).resolve() / "worker.key"


def new_key(cache: Path) -> bytes:
    """A fresh random key in ``cache/worker.key`` (0600), replacing any earlier one."""
    path = key_path(cache)
    path.unlink(missing_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def serve(cache: Path) -> None:
    from .handlers import handle   # torch and the pipeline: imported once, here

    key = key_path(cache).read_bytes()
    address = socket_path(cache)
    address.unlink(missing_ok=True)
    with Listener(str(address), family="AF_UNIX", authkey=key) as listener:
        os.chmod(address, 0o600)
        log.info("site worker ready on %s", address)
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError) as exc:   # a caller without the key, or gone
                log.warning("refused a connection: %s", type(exc).__name__)
                continue
            with conn:
                try:
                    kind, node_config, config, arrays = conn.recv()
                except (EOFError, OSError, ValueError):
                    continue
                try:
                    arrays_out, metrics = handle(kind, node_config, config, arrays)
                    conn.send(("ok", arrays_out, metrics))
                except SiteRefusal as refusal:
                    log.error("refused %s: %s", kind, refusal.reason)
                    conn.send(("refused", refusal.code, refusal.reason))
                except Exception:
                    log.exception("%s failed", kind)
                    conn.send(("refused", E_INTERNAL, SiteRefusal(E_INTERNAL).reason))


def ask(socket: str, key_file: str, request: tuple, timeout: float | None = None):
    """Send one request to the worker; the answer tuple."""
    key = Path(key_file).read_bytes()
    with Client(socket, family="AF_UNIX", authkey=key) as conn:
        conn.send(request)
        if timeout is not None and not conn.poll(timeout):
            raise TimeoutError(f"the site worker did not answer within {timeout:.0f} s")
        return conn.recv()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m spinemet.client.worker",
                                description="SpineMet site worker (started by spinemet-client)")
    p.add_argument("--cache", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    serve(args.cache)


if __name__ == "__main__":
    main()
