# SPDX-License-Identifier: AGPL-3.0-or-later
"""`lila up`'s closing summary, read from real peer diaries (peer.events.EventLog)."""

from __future__ import annotations

from pathlib import Path

from lila_run.summary import RunSummary, evaluations, format_summary, traffic
from peer.averaging.stats import fp32_round_bytes
from peer.events import EVENTS_FILE, EventLog

NUMEL = 1_000_003


def _diary(directory: Path, bpbs: dict[int, float | None], rounds: list[tuple[int, int]]) -> None:
    log = EventLog(directory / EVENTS_FILE)
    log.write("state", outer_step=0, params_sha256="a", source="init", val_bpb=bpbs.pop(0, None))
    for index, (group_size, sent) in enumerate(rounds, start=1):
        log.write("round", round=index, status="ok", group_size=group_size, bytes_sent=sent,
                  fp32_bytes=fp32_round_bytes(NUMEL, group_size))
        log.write("outer_step", outer_step=index, params_sha256="b", val_bpb=bpbs.get(index), tokens=100)
    log.close()


def test_fp32_round_bytes_counts_contributions_and_the_owned_aggregate():
    assert fp32_round_bytes(NUMEL, 1) == 0
    assert fp32_round_bytes(NUMEL, 2) == 4 * NUMEL  # half out, half of the aggregate back
    assert fp32_round_bytes(1000, 4) == 6000  # 2 * 4 bytes * 1000 * 3/4


def test_summary_reads_evaluations_and_traffic_from_the_diaries(tmp_path: Path):
    a, b = tmp_path / "peer-0", tmp_path / "peer-1"
    _diary(a, {0: 3.7, 1: 3.2, 3: 2.9}, [(2, 500_000), (2, 500_000), (1, 0)])
    _diary(b, {0: 3.7, 1: 3.2, 2: 3.0, 3: 2.9}, [(2, 600_000), (2, 600_000), (2, 600_000)])
    found = evaluations([a, b])
    assert found == ((0, 3.7), (1, 3.2), (2, 3.0), (3, 2.9))
    peers = traffic([a, b])
    assert [(p.name, p.rounds, p.bytes_sent, p.fp32_bytes) for p in peers] == [
        ("peer-0", 2, 1_000_000, 8 * NUMEL), ("peer-1", 3, 1_800_000, 12 * NUMEL)]
    summary = RunSummary(tokens=12_345, evaluations=found, traffic=peers, checkpoint=tmp_path / "checkpoint",
                         status_page=tmp_path / "status.html", sample="The lattice")
    assert summary.falls_at_every_evaluation
    text = "\n".join(format_summary(summary))
    assert "12,345 trained" in text
    assert "3.7000 at the start -> 2.9000 at outer step 3 (falls at every evaluation: 3.700 3.200 3.000 2.900)" in text
    assert f"peer-0       sent 1.00 MB in 2 rounds; fp32 would have sent {8 * NUMEL / 1e6:.2f} MB (8.0x more)" in text
    assert f"checkpoint   {tmp_path / 'checkpoint'}" in text and f"status page  {tmp_path / 'status.html'}" in text
    assert "sample       'The lattice'" in text


def test_a_rise_and_a_lone_peer_are_said_plainly(tmp_path: Path):
    a = tmp_path / "peer-0"
    _diary(a, {0: 3.7, 1: 3.8}, [(1, 0)])
    summary = RunSummary(tokens=None, evaluations=evaluations([a]), traffic=traffic([a]), checkpoint=None,
                         status_page=None, sample=None)
    assert not summary.falls_at_every_evaluation
    text = "\n".join(format_summary(summary))
    assert "does not fall at every evaluation" in text
    assert "peer-0       averaged with no other peer" in text
    assert "tokens       unknown" in text and "none was written" in text and "not saved" in text
