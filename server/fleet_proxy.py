"""The coordinator's public door: TLS in, the Fleet API alone through.

Flower 1.42's SuperLink serves the Fleet API (SuperNodes), the Control API (enrolment, run
submission: the ``flwr`` CLI) and the Runtime API (the ServerApp) on ONE HTTP(S) port, and
the Control API asks no credential: whoever reaches that port could enrol a node or submit
code that then runs at every hospital. So ``flower-server`` binds the SuperLink to loopback
and publishes this proxy instead: it terminates TLS with the coordinator's certificate and
forwards ``/v1/fleet/*`` (and ``/health``) to the SuperLink, over TLS checked against the
federation's CA. Every other path gets 403 and never reaches Flower.

It is a Starlette app served by uvicorn, forwarding with httpx (the libraries Flower itself
is built on). A production site may put its own reverse proxy (nginx, HAProxy) in this
place instead; the rule is the same: only ``/v1/fleet/`` (and ``/health``) passes. The
project ships no such configuration.

Run by ``flower-server``; standalone::

    python -m spinemet.server.fleet_proxy --listen 0.0.0.0:9092 --upstream 127.0.0.1:9093 \\
        --certs CERTS/coordinator
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("spinemet.fleet_proxy")

PUBLIC_PREFIX = "/v1/fleet/"
PUBLIC_PATHS = ("/health",)
# Hop-by-hop headers (RFC 9110 sec. 7.6.1) and those httpx sets itself.
_DROP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
         "trailer", "transfer-encoding", "upgrade", "host", "content-length"}


def is_public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIX) or path in PUBLIC_PATHS


def build_app(upstream: str, ca_file: Path | None, timeout: float = 120.0) -> Starlette:
    """The proxy as an ASGI app (``upstream`` = 'host:port' of the SuperLink)."""
    if ca_file is not None:
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file))
        base = f"https://{upstream}"
    else:
        verify, base = False, f"http://{upstream}"
    client = httpx.AsyncClient(base_url=base, verify=verify, timeout=timeout)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not is_public(path):
            log.warning("refused %s %s from %s: only the Fleet API is published",
                        request.method, path, request.client.host if request.client else "?")
            return JSONResponse({"detail": "Forbidden: this port publishes the Fleet API "
                                           "only (SuperNodes). Enrolment and run submission "
                                           "happen on the coordinator host."}, status_code=403)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP]
        body = await request.body()
        try:
            upstream_response = await client.request(request.method, path,
                                                     params=request.query_params,
                                                     headers=headers, content=body)
        except httpx.HTTPError as exc:
            log.error("SuperLink unreachable for %s: %s", path, type(exc).__name__)
            return JSONResponse({"detail": "the coordinator's SuperLink is not reachable"},
                                status_code=503)
        out_headers = {k: v for k, v in upstream_response.headers.items()
                       if k.lower() not in _DROP | {"content-encoding"}}
        return Response(upstream_response.content, status_code=upstream_response.status_code,
                        headers=out_headers)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)],
                     lifespan=lifespan)


def serve(listen: str, upstream: str, certs: Path | None) -> None:
    host, port = listen.rsplit(":", 1)
    tls = {}
    ca = None
    if certs is not None:
        tls = {"ssl_certfile": str(certs / "server.crt"), "ssl_keyfile": str(certs / "server.key")}
        ca = certs / "ca.crt"
    uvicorn.run(build_app(upstream, ca), host=host.strip("[]"), port=int(port),
                log_level="warning", access_log=False, **tls)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m spinemet.server.fleet_proxy",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="public HOST:PORT")
    p.add_argument("--upstream", required=True, help="the SuperLink's loopback HOST:PORT")
    p.add_argument("--certs", type=Path, help="the coordinator certs folder (server.crt, "
                                              "server.key, ca.crt); omit for plaintext")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fleet-proxy %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    serve(args.listen, args.upstream, args.certs)


if __name__ == "__main__":
    main()
