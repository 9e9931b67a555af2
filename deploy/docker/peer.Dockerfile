# syntax=docker/dockerfile:1
# SPDX-License-Identifier: AGPL-3.0-or-later
#
# A LILA Network peer on an NVIDIA GPU (it also runs on CPU with LILA_DEVICE=cpu). The base image
# carries CUDA, cuDNN and a matching PyTorch; the GPU comes in through the NVIDIA container toolkit
# (`docker run --gpus all`, or a compose device reservation). Build from the repository root:
#
#   docker build -f deploy/docker/peer.Dockerfile -t lila-network/peer:0.1.0 .
#   docker run --gpus all -e LILA_JOIN_TOKEN=TOKEN -v lila-peer:/data lila-network/peer:0.1.0 \
#       coordinator.example.org:7600 --name "alice's GPU"
#
# The entry point (deploy/docker/peer-entrypoint.sh) runs `lila-peer join` and says which environment
# variables it reads. BASE_IMAGE: pick a PyTorch runtime tag whose CUDA version your driver supports
# (`nvidia-smi` shows the newest CUDA the driver runs); the torch in it must be >= 2.4.

ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY lila_model ./lila_model
COPY lila_data ./lila_data
COPY lila_codec ./lila_codec
COPY lila_run ./lila_run
COPY lila_net ./lila_net
COPY coordinator ./coordinator
COPY peer ./peer
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="lila-peer" \
      org.opencontainers.image.description="LILA Network volunteer peer (lila-peer join)" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LILA_DEVICE=auto \
    LILA_METRICS_HOST=0.0.0.0 \
    LILA_METRICS_PORT=9400 \
    LILA_WORKDIR=/data
COPY --from=build /wheels /wheels
# The base image's torch satisfies the project's torch>=2.4, so pip keeps it and adds the rest.
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 lila \
    && useradd --system --uid 10001 --gid lila --home-dir /data --shell /usr/sbin/nologin lila \
    && mkdir -p /data \
    && chown lila:lila /data
COPY --chmod=0755 deploy/docker/peer-entrypoint.sh /opt/lila/bin/peer-entrypoint.sh
COPY deploy/docker/healthcheck.py /opt/lila/bin/healthcheck.py
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# 9400 Prometheus /metrics of this peer.
EXPOSE 9400
# The probe target follows LILA_METRICS_HOST/PORT (a wildcard host is probed on loopback).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["/bin/sh", "-c", "exec python /opt/lila/bin/healthcheck.py --timeout 5 \"http://${LILA_METRICS_HOST}:${LILA_METRICS_PORT}/metrics\""]
ENTRYPOINT ["/opt/lila/bin/peer-entrypoint.sh"]
