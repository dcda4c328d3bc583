#!/bin/sh
# A hospital container's entry point: spinemet-client configured by the environment
# (deploy/README.md, "Configuration"). SPINEMET_SITE and SPINEMET_SERVER are required.
# Extra arguments are passed on.
set -eu
: "${SPINEMET_SITE:?set SPINEMET_SITE to the enrolled name of this hospital}"
: "${SPINEMET_SERVER:?set SPINEMET_SERVER to HOST:PORT of the coordinator}"
set -- --site "$SPINEMET_SITE" --server "$SPINEMET_SERVER" \
    --data "${SPINEMET_DATA:-/data}" --cache "${SPINEMET_CACHE:-/var/cache/spinemet}" \
    --runtime-port "${SPINEMET_RUNTIME_PORT:-9094}" "$@"
if [ -n "${SPINEMET_LABELS:-}" ]; then set -- "$@" --labels "$SPINEMET_LABELS"; fi
if [ -n "${SPINEMET_THREADS:-}" ]; then set -- "$@" --threads "$SPINEMET_THREADS"; fi
if [ -n "${SPINEMET_WORKERS:-}" ]; then set -- "$@" --workers "$SPINEMET_WORKERS"; fi
if [ -n "${SPINEMET_MAX_WAIT_TIME:-}" ]; then
    set -- "$@" --max-wait-time "$SPINEMET_MAX_WAIT_TIME"
fi
if [ "${SPINEMET_INSECURE:-0}" = 1 ]; then
    set -- "$@" --insecure
else
    set -- "$@" --certs "${SPINEMET_CERTS:-/certs}"
fi
exec spinemet-client "$@"
