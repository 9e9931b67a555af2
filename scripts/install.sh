#!/usr/bin/env bash
# SPDX-License-Identifier: AGPL-3.0-or-later
# Set up LILA Network on a fresh Debian/Ubuntu machine: system packages (when run as root), a virtual
# environment in .venv, PyTorch, and the project with its test tools.
#
#   LILA_TORCH_SPEC   what to install for PyTorch (default torch==2.13.0, a CPU wheel where one is on
#                     local disk; on a GPU machine install your CUDA build of torch>=2.4 into .venv first,
#                     and this script keeps it).
#   LILA_SKIP_APT=1   do not install Debian packages (chromium, prometheus, nftables, iproute2: only the
#                     tests need them).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${LILA_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium prometheus nftables iproute2 >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "${LILA_TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, hivemind, grpc; print('installed: torch', torch.__version__, '| hivemind', hivemind.__version__, '| grpcio', grpc.__version__)"
