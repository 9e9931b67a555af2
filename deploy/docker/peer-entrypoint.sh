#!/bin/sh
# SPDX-License-Identifier: AGPL-3.0-or-later
#
# Entry point of the peer image: `lila-peer join` with container-friendly defaults, then your arguments.
#
#   docker run --gpus all -e LILA_JOIN_TOKEN=TOKEN lila-network/peer:0.1.0 coordinator.example.org:7600
#
# Environment (each has a default; arguments given to `docker run` come last and win):
#   LILA_COORDINATOR    the coordinator's gRPC HOST:PORT, when it is not given as the first argument
#   LILA_JOIN_TOKEN     the join token (read by lila-peer itself)
#   LILA_DEVICE         auto | cpu | cuda (default auto: the GPU the container toolkit passed in, else CPU)
#   LILA_METRICS_HOST   address /metrics listens on and is announced to the coordinator as (default 0.0.0.0;
#                       set a name or address Prometheus can reach, e.g. the compose service's hostname)
#   LILA_METRICS_PORT   /metrics port (default 9400; the image's HEALTHCHECK probes it)
#   LILA_P2P_HOST       address the peer listens on for other peers (default 0.0.0.0)
#   LILA_WORKDIR        checkpoints and logs (default /data, the image's volume)
set -eu

if [ -n "${LILA_COORDINATOR:-}" ]; then
    set -- "$LILA_COORDINATOR" "$@"
fi
if [ "$#" -eq 0 ]; then
    echo "lila-peer image: no coordinator: pass its gRPC HOST:PORT as the first argument or set LILA_COORDINATOR" >&2
    exit 2
fi

exec lila-peer join \
    --device "${LILA_DEVICE:-auto}" \
    --metrics-host "${LILA_METRICS_HOST:-0.0.0.0}" \
    --metrics-port "${LILA_METRICS_PORT:-9400}" \
    --host "${LILA_P2P_HOST:-0.0.0.0}" \
    --workdir "${LILA_WORKDIR:-/data}" \
    "$@"
