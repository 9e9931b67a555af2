# SPDX-License-Identifier: AGPL-3.0-or-later
"""The peer's memory plan: exact accounting, and the lila-1b fit on 24 GB and 12 GB GPUs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from lila_model.config import get_preset
from lila_net.config import load_run_config
from peer.hardware import Hardware
from peer.plan import (
    ADAM_STATE_PER_PARAM,
    FP32_BYTES,
    GIB,
    OUTER_STATE_COPIES,
    USABLE_FRACTION,
    ModelSize,
    activation_bytes,
    make_plan,
)


def gpu(gib: float, *, bf16: bool = True) -> Hardware:
    return Hardware(
        device="cuda",
        name="test GPU",
        memory_bytes=int(gib * GIB),
        host_memory_bytes=64 * GIB,
        bf16=bf16,
        fp16=True,
        cpu_threads=8,
    )


def test_state_accounting_is_exact_for_debug() -> None:
    size = ModelSize.of(get_preset("debug"))
    plan = make_plan("debug", gpu(8), batch_size=8, seq_len=256)
    assert plan.weights_bytes == FP32_BYTES * (size.trainable + size.frozen)
    assert plan.grads_bytes == FP32_BYTES * size.trainable
    assert plan.optimizer_bytes == ADAM_STATE_PER_PARAM * FP32_BYTES * size.trainable
    assert plan.outer_state_bytes == OUTER_STATE_COPIES * FP32_BYTES * size.trainable
    assert plan.fits and plan.dtype == "bf16" and not plan.outer_state_on_host
    assert plan.micro_batch * plan.grad_accum == 8


def test_checkpointing_shrinks_activations() -> None:
    config = get_preset("lila-1b")
    full = activation_bytes(config, seq_len=2048, micro_batch=4, dtype="bf16", checkpointing=False)
    ckpt = activation_bytes(config, seq_len=2048, micro_batch=4, dtype="bf16", checkpointing=True)
    assert ckpt < full / 5
    assert activation_bytes(config, seq_len=2048, micro_batch=4, dtype="fp32", checkpointing=False) > full


def test_lila_1b_shipped_run_fits_24gb_but_not_12gb() -> None:
    run = load_run_config("runs/lila-1b.toml")
    seq_len = run.curriculum.max_seq_len
    plan24 = make_plan(
        "lila-1b", gpu(24), batch_size=run.diloco.batch_size, seq_len=seq_len, variant=run.model.variant
    )
    assert plan24.fits
    assert plan24.device_total_bytes <= 24 * GIB
    assert plan24.outer_state_on_host  # 16 B/param of inner state leaves no room for 12 B/param more
    assert plan24.micro_batch * plan24.grad_accum == run.diloco.batch_size
    plan12 = make_plan("lila-1b", gpu(12), batch_size=run.diloco.batch_size, seq_len=seq_len)
    assert not plan12.fits
    assert "does NOT fit" in plan12.message and "GiB" in plan12.message


@pytest.mark.parametrize(("host_gib", "gib"), [(64, 12), (64, 4), (1, 12)])
def test_refused_plan_states_the_total_its_table_prints(host_gib: int, gib: float) -> None:
    """One figure: the table's "total on device" is the need the message states (whether the outer state
    could move to host RAM or not), and the device size it asks for holds that need in its usable share."""
    hardware = Hardware(device="cuda", name="test GPU", memory_bytes=int(gib * GIB), host_memory_bytes=host_gib * GIB,
                        bf16=True, fp16=True, cpu_threads=8)
    plan = make_plan("lila-1b", hardware, batch_size=8, seq_len=2048)
    assert not plan.fits
    rendered = plan.render()
    table_total = re.search(r"total on device\s+([\d.]+) GiB", rendered).group(1)
    stated_need = re.search(r"needs about ([\d.]+) GiB", rendered).group(1)
    assert table_total == stated_need == f"{plan.device_total_bytes / GIB:.2f}"
    device_gib = int(re.search(r"a device of at least (\d+) GiB", rendered).group(1))
    assert (device_gib - 1) * GIB * USABLE_FRACTION < plan.device_total_bytes <= device_gib * GIB * USABLE_FRACTION
    assert ("outer state in host RAM" in plan.message) == plan.outer_state_on_host


def test_old_gpu_gets_fp16_and_cpu_gets_fp32() -> None:
    assert make_plan("debug", gpu(8, bf16=False), batch_size=4, seq_len=128).dtype == "fp16"
    cpu = Hardware(
        device="cpu",
        name="CPU",
        memory_bytes=16 * GIB,
        host_memory_bytes=16 * GIB,
        bf16=False,
        fp16=False,
        cpu_threads=2,
    )
    assert make_plan("debug", cpu, batch_size=4, seq_len=128).dtype == "fp32"


@pytest.mark.parametrize(("memory_gb", "expected_rc"), [(24, 0), (12, 1)])
def test_plan_cli_exit_code(memory_gb: int, expected_rc: int) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "peer.cli",
            "plan",
            "--config",
            "runs/lila-1b.toml",
            "--memory-gb",
            str(memory_gb),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == expected_rc, result.stderr
    assert "lila-20m grown to 36 layers × 1536" in result.stdout  # the staged lila-1b run's largest shape
