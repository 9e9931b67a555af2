# SPDX-License-Identifier: AGPL-3.0-or-later
"""The memory plan: does a preset fit this device, and with which micro-batch, precision and checkpointing.

The estimate counts, in bytes (P = trainable parameters, s = sequence length, d = model width, L = layers,
V = vocabulary, b = micro-batch):

* weights: fp32 master copy, 4·P (plus frozen parameters, 4 bytes each)
* gradients: 4·P
* AdamW state (exp_avg, exp_avg_sq): 8·P
* DiLoCo outer state: the global parameters, the outer Nesterov momentum and the codec's error-feedback
  residual, 3 × 4·P. When the device is short of memory it lives in host RAM instead (it is touched once
  per outer round, so the cost is one copy per round).
* activations per micro-batch: without checkpointing ``L·b·s·d·34`` half-precision bytes (Korthikanti et
  al., with fused/flash attention that keeps no s×s matrix), doubled in fp32; with checkpointing only each
  layer's input ``L·b·s·d`` plus one layer's full activations are held. The output layer adds
  ``b·s·V·12`` bytes (fp32 logits, their gradient and the softmax buffer).
* a fixed reserve for the CUDA context, allocator fragmentation and kernels' workspaces.

For each setting of activation checkpointing the planner takes the largest micro-batch that fits, then
keeps the faster of the two (larger micro-steps use a GPU better up to about 16 K tokens; checkpointing
costs about a third more compute). ``grad_accum = batch_size / micro_batch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from lila_model.config import LilaConfig, get_preset
from lila_model.model import LilaLM

from .hardware import Hardware

GIB = 1024**3
FP32_BYTES = 4
HALF_BYTES = 2
ADAM_STATE_PER_PARAM = 2
OUTER_STATE_COPIES = 3  # global parameters, outer momentum, error-feedback residual
ACTIVATION_BYTES_PER_TOKEN_WIDTH_HALF = 34
LOGIT_BYTES_PER_TOKEN_VOCAB = 12
CUDA_RESERVE_BYTES = int(1.5 * GIB)
CPU_RESERVE_BYTES = int(1.0 * GIB)
# Plan against this share of the device memory: the rest absorbs estimate error and fragmentation.
USABLE_FRACTION = 0.92
# Tokens per micro-step beyond which a GPU is busy enough that a larger micro-batch gains little.
SATURATION_TOKENS_PER_MICRO_STEP = 16384
# Activation checkpointing recomputes the forward pass: about a third more compute per step.
CHECKPOINTING_COST = 4 / 3


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts of a config, measured on the meta device (nothing is allocated)."""

    trainable: int
    frozen: int

    @classmethod
    def of(cls, config: LilaConfig) -> ModelSize:
        with torch.device("meta"):
            model = LilaLM(config)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        frozen += sum(b.numel() for b in model.buffers())
        return cls(trainable=trainable, frozen=frozen)


@dataclass(frozen=True)
class MemoryPlan:
    """How a peer trains a preset on a device, and what each part of the memory holds."""

    preset: str
    device: str
    memory_bytes: int
    fits: bool
    dtype: str  # "bf16", "fp16" (with loss scaling) or "fp32"
    micro_batch: int
    grad_accum: int
    activation_checkpointing: bool
    outer_state_on_host: bool
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    outer_state_bytes: int
    activation_bytes: int
    reserve_bytes: int
    message: str

    @property
    def device_total_bytes(self) -> int:
        outer = 0 if self.outer_state_on_host else self.outer_state_bytes
        return (self.weights_bytes + self.grads_bytes + self.optimizer_bytes + outer
                + self.activation_bytes + self.reserve_bytes)

    def render(self) -> str:
        """A table a volunteer can read."""

        def gb(n: int) -> str:
            return f"{n / GIB:8.2f} GiB"

        outer_where = "host RAM" if self.outer_state_on_host else "device"
        lines = [
            f"preset {self.preset} on {self.device} with {self.memory_bytes / GIB:.1f} GiB",
            f"  weights (fp32 master)     {gb(self.weights_bytes)}",
            f"  gradients                 {gb(self.grads_bytes)}",
            f"  AdamW state               {gb(self.optimizer_bytes)}",
            f"  {f'outer state ({outer_where})':26s}{gb(self.outer_state_bytes)}",
            f"  activations               {gb(self.activation_bytes)}",
            f"  reserve                   {gb(self.reserve_bytes)}",
            f"  total on device           {gb(self.device_total_bytes)}",
        ]
        if self.fits:
            lines.append(
                f"  -> fits: {self.dtype}, micro-batch {self.micro_batch} × grad-accum {self.grad_accum}, "
                f"activation checkpointing {'on' if self.activation_checkpointing else 'off'}"
            )
        lines.append(f"  {self.message}")
        return "\n".join(lines)


def choose_dtype(hardware: Hardware) -> str:
    """bf16 where the device supports it, fp16 with loss scaling on older GPUs, fp32 on CPU."""
    if hardware.device == "cuda":
        return "bf16" if hardware.bf16 else "fp16"
    return "fp32"


def activation_bytes(config: LilaConfig, *, seq_len: int, micro_batch: int, dtype: str,
                     checkpointing: bool) -> int:
    """Activation memory of one micro-batch (see the module docstring for the formula)."""
    scale = 1 if dtype in ("bf16", "fp16") else FP32_BYTES // HALF_BYTES
    tokens = micro_batch * seq_len
    per_layer_full = ACTIVATION_BYTES_PER_TOKEN_WIDTH_HALF * tokens * config.d_model * scale
    if checkpointing:
        layer_inputs = config.n_layers * tokens * config.d_model * HALF_BYTES * scale
        body = layer_inputs + per_layer_full
    else:
        body = config.n_layers * per_layer_full
    logits = LOGIT_BYTES_PER_TOKEN_VOCAB * tokens * config.vocab_size
    return int(body + logits)


def make_plan(preset: str, hardware: Hardware, *, batch_size: int, seq_len: int,
              variant: str = "vanilla", config: LilaConfig | None = None) -> MemoryPlan:
    """Plan training ``preset`` on ``hardware`` for a per-peer batch of ``batch_size`` sequences; ``config``
    (a staged run's largest model shape) replaces the preset's."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be >= 1")
    if config is not None:
        preset = f"{preset} grown to {config.n_layers} layers × {config.d_model}"
    config = config if config is not None else get_preset(preset, variant=variant)
    size = ModelSize.of(config)
    dtype = choose_dtype(hardware)
    weights = FP32_BYTES * (size.trainable + size.frozen)
    grads = FP32_BYTES * size.trainable
    optimizer = ADAM_STATE_PER_PARAM * FP32_BYTES * size.trainable
    outer = OUTER_STATE_COPIES * FP32_BYTES * size.trainable
    reserve = CUDA_RESERVE_BYTES if hardware.device == "cuda" else CPU_RESERVE_BYTES
    usable = int(hardware.memory_bytes * USABLE_FRACTION)
    fixed = weights + grads + optimizer + reserve

    outer_on_host = fixed + outer > usable and hardware.device != "cpu"
    if outer_on_host and outer > hardware.host_memory_bytes:
        outer_on_host = False  # nowhere to put it; the fit check below reports the shortfall
    on_device_fixed = fixed + (0 if outer_on_host else outer)

    best: tuple[float, int, bool, int] | None = None  # (score, micro-batch, checkpointing, activation bytes)
    for checkpointing in (False, True):
        for micro in _divisors_desc(batch_size):
            act = activation_bytes(config, seq_len=seq_len, micro_batch=micro, dtype=dtype,
                                   checkpointing=checkpointing)
            if on_device_fixed + act <= usable:
                score = _throughput_score(micro * seq_len, checkpointing)
                if best is None or score > best[0]:
                    best = (score, micro, checkpointing, act)
                break  # the largest micro-batch that fits with this checkpointing setting
    if best is not None:
        _, micro, checkpointing, act = best
        where = "host RAM" if outer_on_host else "device memory"
        return MemoryPlan(
            preset=preset, device=hardware.device, memory_bytes=hardware.memory_bytes, fits=True,
            dtype=dtype, micro_batch=micro, grad_accum=batch_size // micro,
            activation_checkpointing=checkpointing, outer_state_on_host=outer_on_host,
            weights_bytes=weights, grads_bytes=grads, optimizer_bytes=optimizer,
            outer_state_bytes=outer, activation_bytes=act, reserve_bytes=reserve,
            message=(f"{preset} fits ({size.trainable / 1e6:.1f} M trainable parameters); "
                     f"the outer state lives in {where}."),
        )
    smallest = activation_bytes(config, seq_len=seq_len, micro_batch=1, dtype=dtype, checkpointing=True)
    refused = MemoryPlan(
        preset=preset, device=hardware.device, memory_bytes=hardware.memory_bytes, fits=False,
        dtype=dtype, micro_batch=1, grad_accum=batch_size, activation_checkpointing=True,
        outer_state_on_host=outer_on_host, weights_bytes=weights, grads_bytes=grads,
        optimizer_bytes=optimizer, outer_state_bytes=outer, activation_bytes=smallest,
        reserve_bytes=reserve, message="",
    )
    # one figure: the table's "total on device" is the need; the device must hold it in its usable share
    needed = refused.device_total_bytes
    device_gib = math.ceil(needed / USABLE_FRACTION / GIB)
    outer_where = "host RAM" if outer_on_host else "device memory"
    return replace(refused, message=(
        f"{preset} does NOT fit in {hardware.memory_bytes / GIB:.1f} GiB: even with activation checkpointing, "
        f"micro-batch 1 and the outer state in {outer_where} it needs about {needed / GIB:.2f} GiB on the "
        f"device (the total above), so a device of at least {device_gib} GiB (plans use "
        f"{USABLE_FRACTION:.0%} of a device's memory). Join a run with a smaller preset, or use such a device."))


def _throughput_score(tokens_per_micro_step: int, checkpointing: bool) -> float:
    """Relative speed: larger micro-steps use the device better up to a saturation point, and
    checkpointing recomputes the forward pass."""
    score = min(tokens_per_micro_step, SATURATION_TOKENS_PER_MICRO_STEP)
    return score / CHECKPOINTING_COST if checkpointing else float(score)


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]
