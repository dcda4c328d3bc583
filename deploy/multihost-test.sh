#!/bin/sh
# The multi-host test (deploy/multihost.py): a coordinator and three hospitals in their own
# Linux network namespaces, over TLS with site enrolment, one hospital's link cut and
# restored during round 1. Needs root and iproute2; prints why and exits 0 when it cannot
# run (CI runs it through tests/test_multihost.py, which skips with the reason).
#   sudo deploy/multihost-test.sh [--work DIR] [--bin VENV/bin]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python="${PYTHON:-$here/../.venv/bin/python}"
if [ ! -x "$python" ]; then python=python3; fi
exec "$python" "$here/multihost.py" "$@"
