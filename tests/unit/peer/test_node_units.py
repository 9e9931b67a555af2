# SPDX-License-Identifier: AGPL-3.0-or-later
"""Pieces of the peer node that need no network: averaging timeouts from the run, which downloaded states
are accepted, and how a blocking network call gives way to Ctrl+C."""

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
from peer.averaging import DownloadResult, StateSnapshot
from peer.averaging.config import AveragingConfig
from peer.checkpoints import CheckpointStore
from peer.node import PeerNode, PeerOptions, Stopped
from tests.helpers.paths import REPO


def test_averaging_timeouts_split_the_run_s_averaging_timeout() -> None:
    run = load_run_config(REPO / "runs" / "cpu-demo.toml")  # matchmaking 2 s, averaging timeout 20 s
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
    assert PeerNode._accept(_download(5, params, good), 5)
    assert PeerNode._accept(_download(6, params, None), 5)  # an older donor that announces no hash
    assert not PeerNode._accept(_download(4, params, good), 5)  # behind what we need
    assert not PeerNode._accept(_download("5", params, good), 5)
    assert not PeerNode._accept(_download(5, params, "0" * 64), 5)  # bytes do not match the claim


def test_a_blocking_network_call_gives_way_to_the_stop_flag_and_is_cancelled() -> None:
    stop = threading.Event()
    node = PeerNode(PeerOptions(coordinator="127.0.0.1:9", token="t"), stop=stop)
    try:
        done: concurrent.futures.Future[int] = concurrent.futures.Future()
        done.set_result(7)
        assert node._wait(done, timeout=1.0) == 7
        never: concurrent.futures.Future[int] = concurrent.futures.Future()
        with pytest.raises(concurrent.futures.TimeoutError):
            node._wait(never, timeout=0.3)
        assert never.cancelled()
        hanging: concurrent.futures.Future[int] = concurrent.futures.Future()
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        with pytest.raises(Stopped):
            node._wait(hanging, timeout=60.0)
        assert time.monotonic() - started < 1.5 and hanging.cancelled()
    finally:
        node.client.close()
        node.metrics.close()


def test_a_checkpoint_that_cannot_be_written_is_reported_and_training_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = PeerNode(PeerOptions(coordinator="127.0.0.1:9", token="t"), stop=threading.Event())
    try:
        blocked = tmp_path / "not-a-directory"
        blocked.write_text("a file where the checkpoint folder should be")  # every write fails (OSError)
        node.run_config = load_run_config(REPO / "runs" / "cpu-demo.toml")
        node.store = CheckpointStore(blocked)
        node.model = torch.nn.Linear(2, 2)
        node.outer = SimpleNamespace(state_dict=lambda: {"global_params": torch.zeros(6)})
        node.trainer = SimpleNamespace(state_dict=lambda: {})
        node.outer_step = 3
        with caplog.at_level("WARNING", logger="peer.node"):
            node._checkpoint(val_bpb=2.5)  # no exception
        assert "could not write the checkpoint of outer step 3" in caplog.text and "free space" in caplog.text
        assert blocked.read_text().startswith("a file")  # nothing was lost or half-written
    finally:
        node.close()
