# SPDX-License-Identifier: AGPL-3.0-or-later
"""Pieces of the peer's phases that need no network: averaging timeouts from the run, which downloaded
states are accepted, how a blocking network call gives way to Ctrl+C, and a checkpoint that cannot be
written."""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lila_net.config import load_run_config
from peer.after_round import checkpoint
from peer.averaging import DownloadResult, StateSnapshot
from peer.averaging.config import AveragingConfig
from peer.checkpoints import CheckpointStore
from peer.errors import Stopped
from peer.sync import accept_download, wait_future
from tests.helpers.paths import RUNS


def test_averaging_timeouts_split_the_run_s_averaging_timeout() -> None:
    run = load_run_config(RUNS / "cpu-demo.toml")  # matchmaking 2 s, averaging timeout 20 s
    cfg = AveragingConfig.for_run(run.diloco)
    assert (cfg.matchmaking_time, cfg.part_timeout, cfg.result_timeout) == (2.0, 9.0, 9.0)
    assert cfg.matchmaking_time + cfg.allreduce_deadline == run.diloco.averaging_timeout_s


def _download(step: object, params: torch.Tensor, claimed: str | None) -> DownloadResult:
    metadata = {"outer_step": step}
    if claimed is not None:
        metadata["params_sha256"] = claimed
    snapshot = StateSnapshot(tensors={"global_params": params, "momentum_buffer": torch.zeros_like(params)},
                             metadata=metadata)
    return DownloadResult(snapshot, donor="QmDonor")


def test_a_download_is_accepted_only_when_new_enough_and_its_hash_is_the_announced_one() -> None:
    params = torch.arange(6, dtype=torch.float32)
    good = hashlib.sha256(params.numpy().tobytes()).hexdigest()
    assert accept_download(_download(5, params, good), 5)
    assert accept_download(_download(6, params, None), 5)  # an older donor that announces no hash
    assert not accept_download(_download(4, params, good), 5)  # behind what we need
    assert not accept_download(_download("5", params, good), 5)
    assert not accept_download(_download(5, params, "0" * 64), 5)  # bytes do not match the claim


def test_a_blocking_network_call_gives_way_to_the_stop_flag_and_is_cancelled() -> None:
    stop = threading.Event()
    done: concurrent.futures.Future[int] = concurrent.futures.Future()
    done.set_result(7)
    assert wait_future(done, 1.0, stop=stop) == 7
    never: concurrent.futures.Future[int] = concurrent.futures.Future()
    with pytest.raises(concurrent.futures.TimeoutError):
        wait_future(never, 0.3, stop=stop)
    assert never.cancelled()
    hanging: concurrent.futures.Future[int] = concurrent.futures.Future()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        wait_future(hanging, 60.0, stop=stop)
    assert time.monotonic() - started < 1.5 and hanging.cancelled()


def test_a_checkpoint_that_cannot_be_written_is_reported_and_training_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the checkpoint folder should be")  # every write fails (OSError)
    peer = SimpleNamespace(  # the parts of a peer that checkpointing reads
        run=load_run_config(RUNS / "cpu-demo.toml"),
        training=SimpleNamespace(store=CheckpointStore(blocked), model=torch.nn.Linear(2, 2),
                                 outer=SimpleNamespace(state_dict=lambda: {"global_params": torch.zeros(6)}),
                                 trainer=SimpleNamespace(state_dict=lambda: {}), model_stage=0),
        progress=SimpleNamespace(outer_step=3, params_hash=""),
    )
    with caplog.at_level("WARNING", logger="peer.after_round"):
        checkpoint(peer, val_bpb=2.5)  # no exception
    assert "could not write the checkpoint of outer step 3" in caplog.text and "free space" in caplog.text
    assert blocked.read_text().startswith("a file")  # nothing was lost or half-written
