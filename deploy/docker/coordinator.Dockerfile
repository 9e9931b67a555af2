# syntax=docker/dockerfile:1
# SPDX-License-Identifier: AGPL-3.0-or-later
#
# The LILA Network coordinator: gRPC for peers, the status page and /metrics over HTTP, the hivemind
# DHT bootstrap node, and the run's SQLite ledger in the /data volume. Build from the repository root:
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t lila-network/coordinator:0.1.0 .
#   docker run -d -v lila-coordinator:/data -p 7600:7600 -p 8080:8080 -p 31337:31337 \
#       lila-network/coordinator:0.1.0
#
# The default command serves runs/cpu-demo.toml; pass your own `serve --config ...` (the shipped runs
# are in /opt/lila/runs, or mount yours) to change it. Tokens: `docker exec` into the container and run
# `lila-coordinator token create --db /data/run.db`. docs/deploy.md has the whole walk-through.
#
# TORCH_VERSION: the coordinator never trains, so a CPU wheel of torch is enough (the CUDA one from
# PyPI is a few GB larger); any version the project supports (>=2.4) works.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY lila_model ./lila_model
COPY lila_data ./lila_data
COPY lila_codec ./lila_codec
COPY lila_run ./lila_run
COPY lila_net ./lila_net
COPY coordinator ./coordinator
COPY peer ./peer
RUN pip install --no-cache-dir /src

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="lila-coordinator" \
      org.opencontainers.image.description="LILA Network coordinator (gRPC, status page, metrics, DHT bootstrap)" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LILA_HEALTH_URL=http://127.0.0.1:8080/api/status
RUN groupadd --system --gid 10001 lila \
    && useradd --system --uid 10001 --gid lila --home-dir /data --shell /usr/sbin/nologin lila \
    && mkdir -p /data \
    && chown lila:lila /data
COPY --from=build /opt/venv /opt/venv
COPY runs /opt/lila/runs
COPY deploy/docker/healthcheck.py /opt/lila/bin/healthcheck.py
COPY deploy/prometheus/fetch_targets.py /opt/lila/bin/fetch_targets.py
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# 7600 gRPC (peers), 8080 HTTP (status page, /api/status, /metrics), 31337 the DHT bootstrap node (TCP).
EXPOSE 7600 8080 31337
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/opt/lila/bin/healthcheck.py", "--timeout", "5"]
ENTRYPOINT ["lila-coordinator"]
CMD ["serve", "--config", "/opt/lila/runs/cpu-demo.toml", "--db", "/data/run.db", \
     "--grpc", "0.0.0.0:7600", "--http", "0.0.0.0:8080", \
     "--dht-port", "31337", "--dht-identity", "/data/dht-identity.key"]
