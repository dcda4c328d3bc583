#!/bin/sh
# The coordinator container's entry point: flower-server configured by the environment
# (deploy/README.md, "Configuration"). Starts the run in $SPINEMET_OUT, or resumes it
# when that folder already holds one (a restarted container or pod continues the run
# after its last checkpoint instead of starting again). Extra arguments are passed on.
set -eu
out="${SPINEMET_OUT:-/var/lib/spinemet/run}"
if [ -f "$out/deployment.json" ]; then
    echo "resuming the run in $out"
    exec flower-server --resume "$out" "$@"
fi
set -- --out "$out" --host "${SPINEMET_HOST:-0.0.0.0}" --port "${SPINEMET_PORT:-9092}" \
    --rounds "${SPINEMET_ROUNDS:-100}" --local-epochs "${SPINEMET_LOCAL_EPOCHS:-1}" \
    --batch-size "${SPINEMET_BATCH_SIZE:-8}" \
    --model "${SPINEMET_MODEL:-paper}" --strategy "${SPINEMET_STRATEGY:-fedavg}" \
    --min-sites "${SPINEMET_MIN_SITES:-2}" \
    --wait-for-sites "${SPINEMET_WAIT_FOR_SITES:-600}" \
    --round-timeout "${SPINEMET_ROUND_TIMEOUT:-1800}" --seed "${SPINEMET_SEED:-0}" "$@"
if [ -n "${SPINEMET_THREADS:-}" ]; then set -- "$@" --threads "$SPINEMET_THREADS"; fi
if [ -n "${SPINEMET_TEST_DATA:-}" ]; then set -- "$@" --test-data "$SPINEMET_TEST_DATA"; fi
if [ "${SPINEMET_INSECURE:-0}" = 1 ]; then
    set -- "$@" --insecure
else
    set -- "$@" --certs "${SPINEMET_CERTS:-/certs}"
fi
exec flower-server "$@"
