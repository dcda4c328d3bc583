"""Container health: ``healthcheck.py coordinator`` or ``healthcheck.py hospital``.

coordinator: the Fleet API answers ``GET /health`` with 200 over TLS, checked against the
federation CA (``$SPINEMET_CERTS/ca.crt``; the coordinator certificate always names
127.0.0.1). hospital: the SuperNode's local runtime port (``$SPINEMET_RUNTIME_PORT``, 9094)
accepts a connection, which it does once the site's data is preprocessed and the SuperNode
runs. Exit 0 healthy, 1 not. Standard library only.
"""

import os
import socket
import ssl
import sys
import urllib.request


def coordinator() -> bool:
    port = int(os.environ.get("SPINEMET_PORT", "9092"))
    ca = os.path.join(os.environ.get("SPINEMET_CERTS", "/certs"), "ca.crt")
    insecure = os.environ.get("SPINEMET_INSECURE") == "1"
    context = None if insecure else ssl.create_default_context(cafile=ca)
    url = f"{'http' if insecure else 'https'}://127.0.0.1:{port}/health"
    with urllib.request.urlopen(url, context=context, timeout=8) as response:
        return response.status == 200


def hospital() -> bool:
    port = int(os.environ.get("SPINEMET_RUNTIME_PORT", "9094"))
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return True


if __name__ == "__main__":
    try:
        ok = {"coordinator": coordinator, "hospital": hospital}[sys.argv[1]]()
    except (OSError, KeyError, IndexError, ValueError) as exc:
        print(f"unhealthy: {exc!r}", file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)
