# SPDX-License-Identifier: AGPL-3.0-or-later
"""What this machine offers a peer: the compute device, its memory, and which low precisions it supports."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil
import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
# Ampere (compute capability 8.0) is the first NVIDIA generation with fast bf16.
BF16_MIN_CUDA_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Hardware:
    """A compute device as the memory planner sees it.

    ``memory_bytes`` is what the device can hold (GPU memory, or host RAM for ``cpu``);
    ``host_memory_bytes`` is the host RAM available for state kept off the device.
    """

    device: str
    name: str
    memory_bytes: int
    host_memory_bytes: int
    bf16: bool
    fp16: bool
    cpu_threads: int


class HardwareError(RuntimeError):
    """The requested device is not usable here; the message says what to use instead."""


def detect_hardware(device: str = "auto") -> Hardware:
    """Find the device to train on. ``auto`` prefers CUDA, then Apple MPS, then the CPU."""
    if device not in DEVICE_CHOICES:
        raise HardwareError(f"--device {device!r} is unknown; choose one of {', '.join(DEVICE_CHOICES)}")
    host = psutil.virtual_memory().available
    threads = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    if device in ("auto", "cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        capability = (props.major, props.minor)
        return Hardware(
            device="cuda",
            name=props.name,
            memory_bytes=int(props.total_memory),
            host_memory_bytes=int(host),
            bf16=capability >= BF16_MIN_CUDA_CAPABILITY,
            fp16=True,
            cpu_threads=threads,
        )
    if device == "cuda":
        raise HardwareError("--device cuda: no CUDA GPU is visible to PyTorch; use --device auto or cpu")
    if device in ("auto", "mps") and torch.backends.mps.is_available():
        # MPS shares the unified memory with the host; half of it is a safe working budget.
        return Hardware(
            device="mps", name="Apple MPS", memory_bytes=int(psutil.virtual_memory().total // 2),
            host_memory_bytes=int(host), bf16=False, fp16=True, cpu_threads=threads,
        )
    if device == "mps":
        raise HardwareError("--device mps: Apple MPS is not available here; use --device auto or cpu")
    return Hardware(
        device="cpu", name="CPU", memory_bytes=int(host), host_memory_bytes=int(host),
        bf16=False, fp16=False, cpu_threads=threads,
    )
