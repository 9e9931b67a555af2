# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's view of the run as a peer keeps it (peer.network_view), fed by real protobuf answers."""

from __future__ import annotations

from lila_net.proto import coordinator_pb2 as pb
from peer.network_view import KEEP_STEPS, NetworkView

H = {step: f"{step:064x}" for step in range(40)}


def test_the_view_vouches_for_recent_steps_never_goes_down_and_drops_bad_hashes() -> None:
    view = NetworkView()
    assert (view.known, view.get(), view.hash_of(0)) == (False, (-1, ""), "")
    view.on_reply(pb.HeartbeatResponse(current_outer_step=5, outer_step_sha256=H[5], recent_step_hashes=[
        pb.StepHash(outer_step=3, sha256=H[3]), pb.StepHash(outer_step=4, sha256="not-a-hash"),
        pb.StepHash(outer_step=6, sha256=H[6])]))  # a step beyond the run's is never vouched for
    assert (view.step, view.hash_of(5), view.hash_of(3), view.hash_of(4), view.hash_of(6)) == (5, H[5], H[3], "", "")
    view.on_reply(pb.JoinResponse(current_outer_step=2, outer_step_sha256=H[2]))  # a late, older answer
    assert view.get() == (5, H[5])
    for step in range(6, 30):
        view.on_reply(pb.HeartbeatResponse(current_outer_step=step, recent_step_hashes=[
            pb.StepHash(outer_step=step - 1, sha256=H[step - 1])]))
    assert view.hash_of(28) == H[28] and view.hash_of(29) == ""  # 29: current, no majority yet
    assert view.hash_of(28 - KEEP_STEPS) == "" and view.hash_of(29 - KEEP_STEPS) == H[29 - KEEP_STEPS]


def test_the_view_keeps_how_many_peers_take_part_from_heartbeats_only() -> None:
    view = NetworkView()
    view.on_reply(pb.HeartbeatResponse(current_outer_step=0, peers_taking_part=3))
    view.on_reply(pb.JoinResponse(current_outer_step=0))  # says nothing about it: kept
    assert view.taking_part == 3
