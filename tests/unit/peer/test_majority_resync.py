# SPDX-License-Identifier: AGPL-3.0-or-later
"""A peer the coordinator finds in a minority (its parameter hash is not the one most peers reported for the step)
logs both hashes and, before its next period, downloads the majority's state: only a download whose own bytes hash
to the majority's sha256 is loaded, whatever the donors announce. The donors are stand-ins (what is tested is the
peer's choice among them, not the network); the outer optimizer, model, metrics and diary are the real ones."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from types import SimpleNamespace

import pytest
import torch

import peer.sync
from peer.after_round import report_outer_step
from peer.averaging import Donor, DownloadResult, StateSnapshot
from peer.coordinator_client import OuterStepAnswer
from peer.events import EventLog, read_events
from peer.link import LinkMeter
from peer.metrics import PeerMetrics
from peer.network_view import NetworkView
from peer.outer import OuterOptimizer, flatten_parameters, params_sha256
from peer.parts import Progress
from peer.sync import follow_majority

STEP = 3


class Donors:
    """Announced donors: peer id -> (announced outer step, parameters served, hash claimed in the metadata)."""

    def __init__(self, served: dict[str, tuple[int, torch.Tensor, str]]) -> None:
        self.served = served
        self.asked: list[str] = []
        self.published: list[StateSnapshot] = []
        self.config = SimpleNamespace(total_timeout=5.0)

    def find_donors(self) -> list[Donor]:
        donors = [Donor(peer_id, step) for peer_id, (step, _, _) in self.served.items()]
        return sorted(donors, key=lambda d: (-d.outer_step, d.peer_id))

    async def download_async(self, *, donors, expected_shapes) -> DownloadResult:
        (donor,) = donors
        self.asked.append(donor)
        step, params, claimed = self.served[donor]
        assert expected_shapes == {"global_params": tuple(params.shape), "momentum_buffer": tuple(params.shape)}
        snapshot = StateSnapshot(tensors={"global_params": params.clone(), "momentum_buffer": torch.zeros_like(params)},
                                 metadata={"outer_step": step, "params_sha256": claimed})
        return DownloadResult(snapshot, donor=donor, bytes_received=params.numel() * 8)

    def publish(self, snapshot: StateSnapshot) -> None:
        self.published.append(snapshot)


def _submit(coro) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(asyncio.run(coro))
    return future


class Client:
    def __init__(self, answer: OuterStepAnswer) -> None:
        self.answer = answer
        self.calls: list[tuple[int, str, int]] = []

    def report_outer_step(self, outer_step: int, *, params_sha256: str, group_size: int) -> OuterStepAnswer:
        self.calls.append((outer_step, params_sha256, group_size))
        return self.answer


def _peer(tmp_path, donors: Donors, answer: OuterStepAnswer):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    outer = OuterOptimizer(flatten_parameters(model), lr=0.7, momentum=0.9)
    outer.step_count = STEP
    progress = Progress(residual=torch.ones_like(outer.global_params), outer_step=STEP,
                        params_hash=outer.params_hash(), group_size=1)
    return SimpleNamespace(
        options=SimpleNamespace(checkpoint_every=0, eval_every=0), stop=threading.Event(), client=Client(answer),
        heartbeat=SimpleNamespace(phase="training"), metrics=PeerMetrics(), events=EventLog(tmp_path / "events.jsonl"),
        training=SimpleNamespace(model=model, outer=outer, val_texts=[], model_stage=0,
                                 stage_numels=(outer.global_params.numel(),)),
        network=SimpleNamespace(state_sync=donors, transport=SimpleNamespace(submit=_submit), link=LinkMeter(),
                                round_sync=SimpleNamespace(view=NetworkView(), donors=lambda floor=-1: donors.find_donors())),
        progress=progress)


def test_a_resync_answer_downloads_only_the_state_that_hashes_to_the_majority(tmp_path, caplog):
    base = flatten_parameters(torch.nn.Linear(3, 2))
    majority, minority, other = base + 1.0, base - 1.0, base + 2.0
    wanted = params_sha256(majority)
    donors = Donors({
        "QmAhead": (STEP + 1, other, params_sha256(other)),  # a step further: cannot hold the step's hash
        "QmBehind": (STEP - 1, majority, wanted),  # announces an older step: never asked
        "QmLiar": (STEP, other, wanted),  # claims the majority's hash, serves other bytes
        "QmGroupMate": (STEP, minority, params_sha256(minority)),  # honest, but in this peer's minority
        "QmMajority": (STEP, majority, wanted),
    })
    node = _peer(tmp_path, donors, OuterStepAnswer(current_outer_step=STEP, resync=True, majority_sha256=wanted))
    own = node.progress.params_hash
    with caplog.at_level("WARNING"):
        report_outer_step(node)
    assert node.client.calls == [(STEP, own, 1)]
    (line,) = [r for r in caplog.records if r.name == "peer.after_round"]
    assert line.levelno == logging.WARNING and wanted in line.getMessage() and own in line.getMessage()
    assert node.progress.majority == (STEP, wanted)
    assert donors.asked == [] and node.progress.params_hash == own  # nothing happens before the next period

    assert follow_majority(node) is True
    assert donors.asked == ["QmGroupMate", "QmLiar", "QmMajority"]
    progress = node.progress
    assert (progress.outer_step, progress.params_hash, progress.majority, progress.group_size) == (STEP, wanted, None, 0)
    assert torch.equal(node.training.outer.global_params, majority)
    assert torch.equal(flatten_parameters(node.training.model), majority)
    assert float(progress.residual.abs().sum()) == 0.0  # error feedback of the old base is dropped
    assert node.metrics.registry.get_sample_value("lila_peer_resyncs_total") == 1.0
    assert [s.metadata["params_sha256"] for s in donors.published] == [wanted]
    node.events.close()
    (synced,) = read_events(tmp_path / "events.jsonl", "state_sync")
    assert (synced["donor"], synced["outer_step"], synced["source"]) == ("QmMajority", STEP, "resync")
    assert follow_majority(node) is False and donors.asked == ["QmGroupMate", "QmLiar", "QmMajority"]


def test_without_a_donor_of_the_majority_s_state_the_peer_says_so_and_keeps_its_own(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(peer.sync, "DONOR_WAIT_S", 0.0)  # one pass over the donors
    base = flatten_parameters(torch.nn.Linear(3, 2))
    wanted = params_sha256(base + 1.0)
    minority = base - 1.0
    donors = Donors({"QmGroupMate": (STEP, minority, params_sha256(minority))})
    node = _peer(tmp_path, donors, OuterStepAnswer(current_outer_step=STEP, resync=True, majority_sha256=wanted))
    own, held = node.progress.params_hash, node.training.outer.global_params.clone()
    report_outer_step(node)
    with caplog.at_level("ERROR", logger="peer.sync"):
        assert follow_majority(node) is False
    assert donors.asked == ["QmGroupMate"]
    assert node.progress.params_hash == own and torch.equal(node.training.outer.global_params, held)
    assert node.progress.majority is None  # asked again at the next report, where the hashes still differ
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert wanted in error.getMessage() and own in error.getMessage()
    assert node.metrics.registry.get_sample_value("lila_peer_resyncs_total") == 0.0


@pytest.mark.parametrize("answer", [
    OuterStepAnswer(current_outer_step=STEP, resync=False, majority_sha256="ab" * 32),
    OuterStepAnswer(current_outer_step=STEP, resync=False, majority_sha256=""),
    OuterStepAnswer(current_outer_step=STEP, resync=True, majority_sha256=""),
])
def test_no_resync_unless_the_coordinator_names_another_majority(tmp_path, answer):
    donors = Donors({})
    node = _peer(tmp_path, donors, answer)
    report_outer_step(node)
    assert node.progress.majority is None and follow_majority(node) is False and donors.asked == []
