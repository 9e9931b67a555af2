# SPDX-License-Identifier: AGPL-3.0-or-later
"""Unit tests of the averaging layer's pure parts: aggregators, frames, state format, verification."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from lila_net.aggregation import (
    AggregationError,
    CenteredClipAggregator,
    Contribution,
    MeanAggregator,
    Rejection,
    TrimmedMeanAggregator,
    get_aggregator,
)
from lila_net.dht.keys import announce_key, check_run_id, protocol
from peer.averaging.allreduce import codec_seed, part_bounds
from peer.averaging.auth import StaticTokenAuthorizer, check_authorized
from peer.averaging.config import AveragingConfig
from peer.averaging.matchmaking import parse_group
from peer.averaging.state_format import StateFormatError, StateSnapshot, pack_state, unpack_state
from peer.averaging.verify import judge, params_hash
from peer.averaging.wire import (
    KIND_REPLY,
    KIND_REQUEST,
    PREFIX,
    Limits,
    RemoteError,
    TooLarge,
    Unauthorized,
    WireError,
    encode_header,
    read_frame,
    write_error,
    write_frame,
)

PEERS = [f"12D3KooW{'A' * 30}{c}" for c in "abcd"]  # valid base58, sorted
LIMITS = Limits(max_credential_bytes=64, max_header_bytes=1024, max_payload_bytes=4096)


def contribution(peer: int, values: list[float]) -> Contribution:
    return Contribution(PEERS[peer], torch.tensor(values, dtype=torch.float32))


# ----------------------------------------------------------------------------- splitting and seeds
def test_part_bounds_cover_the_vector_with_sizes_differing_by_at_most_one() -> None:
    assert part_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert part_bounds(2, 3) == [(0, 1), (1, 2), (2, 2)]
    assert part_bounds(7, 1) == [(0, 7)]
    with pytest.raises(ValueError, match="cannot split"):
        part_bounds(5, 0)


def test_codec_seeds_are_deterministic_and_distinct_per_role() -> None:
    assert codec_seed("run", 3, 1, "0") == codec_seed("run", 3, 1, "0")
    seeds = {codec_seed("run", 3, 1, role) for role in ("0", "1", "aggregate")}
    assert len(seeds) == 3
    assert all(0 <= seed < 2**31 for seed in seeds)


# ----------------------------------------------------------------------------- aggregators
def test_mean_is_exact_and_independent_of_arrival_order() -> None:
    items = [contribution(0, [1.0, 2.0]), contribution(1, [3.0, 6.0]), contribution(2, [2.0, 1.0])]
    forward = MeanAggregator().aggregate(items, numel=2)
    backward = MeanAggregator().aggregate(items[::-1], numel=2)
    assert forward.tensor.tolist() == [2.0, 3.0]
    assert torch.equal(forward.tensor, backward.tensor)
    assert forward.included == (PEERS[0], PEERS[1], PEERS[2])
    assert forward.rejections == ()


def test_every_rule_rejects_non_finite_and_misshapen_contributions() -> None:
    for aggregator in (MeanAggregator(), TrimmedMeanAggregator(), CenteredClipAggregator()):
        items = [
            contribution(0, [1.0, 1.0]),
            contribution(1, [3.0, 3.0]),
            contribution(2, [math.nan, 0.0]),
            contribution(3, [1.0, 1.0, 1.0]),
        ]
        result = aggregator.aggregate(items, numel=2)
        assert result.included == (PEERS[0], PEERS[1])
        assert {(r.peer_id, r.reason) for r in result.rejections} == {
            (PEERS[2], "non_finite"),
            (PEERS[3], "shape_mismatch"),
        }
        assert torch.isfinite(result.tensor).all()


def test_norm_ratio_rejects_a_scaled_contribution_with_evidence() -> None:
    honest = [contribution(0, [3.0, 4.0]), contribution(1, [0.0, 5.0]), contribution(2, [4.0, 3.0])]
    attacker = contribution(3, [300.0, 400.0])  # norm 500 = 100 x the median 5
    result = TrimmedMeanAggregator().aggregate([*honest, attacker], numel=2)
    assert result.rejections == (Rejection(PEERS[3], "norm_ratio", 100.0),)
    assert result.norm_ratios == {PEERS[0]: 1.0, PEERS[1]: 1.0, PEERS[2]: 1.0, PEERS[3]: 100.0}
    # trim 1 of 3 survivors at each end = coordinate-wise median
    assert result.tensor.tolist() == [3.0, 4.0]
    # plain mean has no norm bound by default: the attack goes through, with the same evidence reported
    damaged = MeanAggregator().aggregate([*honest, attacker], numel=2)
    assert damaged.rejections == ()
    assert damaged.norm_ratios[PEERS[3]] == 100.0
    assert damaged.tensor.tolist() == pytest.approx([76.75, 103.0])


def test_lower_median_catches_a_scale_up_with_two_contributors() -> None:
    result = CenteredClipAggregator().aggregate([contribution(0, [1.0]), contribution(1, [100.0])], numel=1)
    assert result.included == (PEERS[0],)
    assert result.rejections == (Rejection(PEERS[1], "norm_ratio", 100.0),)
    assert result.tensor.tolist() == [1.0]


def test_trimmed_mean_drops_extremes_per_coordinate() -> None:
    items = [
        contribution(0, [1.0, 10.0]),
        contribution(1, [2.0, 20.0]),
        contribution(2, [3.0, 30.0]),
        contribution(3, [4.0, -40.0]),
    ]
    result = TrimmedMeanAggregator(max_norm_ratio=None).aggregate(items, numel=2)
    assert result.tensor.tolist() == [2.5, 15.0]
    two = TrimmedMeanAggregator().aggregate(items[:2], numel=2)  # n <= 2*trim: plain mean
    assert two.tensor.tolist() == [1.5, 15.0]


def test_centered_clip_limits_an_outlier_inside_the_norm_bound() -> None:
    honest = [contribution(i, [1.0 + 0.1 * i, -1.0]) for i in range(3)]
    outlier = contribution(3, [9.0, -1.0])  # ratio ~6.4: under the default bound of 10
    clipped = CenteredClipAggregator().aggregate([*honest, outlier], numel=2)
    mean = MeanAggregator().aggregate([*honest, outlier], numel=2)
    assert clipped.included == tuple(PEERS)
    assert mean.tensor[0].item() == pytest.approx(3.075)
    # the honest mean is 1.1; the outlier may pull by at most about one clipping radius (tau = 0.1 here)
    assert abs(clipped.tensor[0].item() - 1.1) <= 0.1
    assert clipped.tensor[1].item() == -1.0


def test_centered_clip_with_fixed_tau_matches_a_hand_computed_step() -> None:
    # x = -1, 0, 3: start at the mean 2/3; distances 5/3, 2/3, 7/3; tau = 1 scales the steps by 3/5, 1, 3/7:
    # step = (-1 - 2/3 + 1) / 3 = -2/9, so one iteration ends at 2/3 - 2/9 = 4/9
    aggregator = CenteredClipAggregator(tau=1.0, iterations=1, max_norm_ratio=None)
    result = aggregator.aggregate(
        [contribution(0, [-1.0]), contribution(1, [0.0]), contribution(2, [3.0])], numel=1
    )
    assert result.tensor.item() == pytest.approx(4 / 9)


def test_all_rejected_raises_and_names_the_reasons() -> None:
    with pytest.raises(AggregationError, match="non_finite"):
        MeanAggregator().aggregate([contribution(0, [math.inf])], numel=1)


def test_get_aggregator_builds_by_name_and_rejects_unknown() -> None:
    assert isinstance(get_aggregator("trimmed_mean", trim=2), TrimmedMeanAggregator)
    assert get_aggregator("centered_clip").max_norm_ratio == 10.0
    with pytest.raises(ValueError, match="choose one of"):
        get_aggregator("median")
    with pytest.raises(ValueError, match="max_norm_ratio"):
        MeanAggregator(max_norm_ratio=0.5)


# ----------------------------------------------------------------------------- frames
class _Sink:
    """Collects what write_frame writes (a StreamWriter stand-in)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.data += chunk

    async def drain(self) -> None:
        return None


def _frame_bytes(**kwargs) -> bytes:
    sink = _Sink()
    written = asyncio.run(write_frame(sink, **kwargs))
    assert written == len(sink.data)
    return bytes(sink.data)


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_frame_round_trip_with_credential_header_and_payload() -> None:
    raw = _frame_bytes(kind=KIND_REQUEST, credential=b"tok", header={"round": 3}, payload=b"\x00\x01\x02")

    async def read():
        seen = []
        frame, _ = await read_frame(
            _reader(raw),
            peer_id="p",
            authorize=lambda peer, cred: seen.append((peer, cred)) or True,
            limits=LIMITS,
            expect=KIND_REQUEST,
        )
        return frame, seen

    frame, seen = asyncio.run(read())
    assert seen == [("p", b"tok")]
    assert (frame.credential, frame.header, frame.payload) == (b"tok", {"round": 3}, b"\x00\x01\x02")
    assert frame.wire_bytes == len(raw) == PREFIX.size + 3 + len(encode_header({"round": 3})) + 3


def test_refused_credential_stops_before_the_header_is_read() -> None:
    raw = _frame_bytes(kind=KIND_REQUEST, credential=b"bad", header={"x": 1}, payload=b"12345")

    async def read():
        reader = _reader(raw)
        with pytest.raises(Unauthorized, match="refused"):
            await read_frame(
                reader, peer_id="p", authorize=lambda *_: False, limits=LIMITS, expect=KIND_REQUEST
            )
        return await reader.read()

    left = asyncio.run(read())
    assert left == encode_header({"x": 1}) + b"12345"


def test_oversize_fields_and_garbage_are_refused_with_the_reason() -> None:
    big = _frame_bytes(kind=KIND_REQUEST, credential=b"t", header={}, payload=bytes(5000))
    garbage = b"HTTP/1.1 200 OK\r\n\r\n" + bytes(20)

    async def read(data: bytes, expect: int = KIND_REQUEST):
        return await read_frame(
            _reader(data), peer_id="p", authorize=lambda *_: True, limits=LIMITS, expect=expect
        )

    with pytest.raises(TooLarge, match="payload of 5000 bytes exceeds 4096"):
        asyncio.run(read(big))
    with pytest.raises(WireError, match="not a LILA peer"):
        asyncio.run(read(garbage))
    not_json = bytearray(_frame_bytes(kind=KIND_REQUEST, credential=b"", header={"a": 1}))
    not_json[PREFIX.size] = 0xFF
    with pytest.raises(WireError, match="not UTF-8 JSON"):
        asyncio.run(read(bytes(not_json)))
    with pytest.raises(WireError, match="expected a frame of kind 2"):
        asyncio.run(read(_frame_bytes(kind=KIND_REQUEST, credential=b"", header={}), expect=KIND_REPLY))


def test_error_frame_raises_remote_error_with_code() -> None:
    sink = _Sink()
    asyncio.run(write_error(sink, "unauthorized", "credential refused"))

    async def read():
        return await read_frame(
            _reader(bytes(sink.data)),
            peer_id="p",
            authorize=lambda *_: True,
            limits=LIMITS,
            expect=KIND_REPLY,
        )

    with pytest.raises(RemoteError) as caught:
        asyncio.run(read())
    assert (caught.value.code, caught.value.message) == ("unauthorized", "credential refused")


def test_authorizers_refuse_wrong_tokens_and_survive_exceptions() -> None:
    authorize = StaticTokenAuthorizer([b"alpha", b"beta"])
    assert authorize("peer", b"beta") is True
    assert authorize("peer", b"gamma") is False
    assert check_authorized(lambda *_: 1 / 0, "peer", b"x") is False
    assert check_authorized(lambda *_: "yes", "peer", b"x") is False
    with pytest.raises(ValueError, match="non-empty token"):
        StaticTokenAuthorizer([b""])


# ----------------------------------------------------------------------------- config, keys, groups
def test_config_and_run_id_validation_name_the_field() -> None:
    with pytest.raises(ValueError, match="part_timeout"):
        AveragingConfig(part_timeout=0)
    with pytest.raises(ValueError, match="max_group_size"):
        AveragingConfig(max_group_size=0)
    assert AveragingConfig().max_part_payload(1000) == 4000 + 65536
    with pytest.raises(ValueError, match="run id"):
        check_run_id("a/b")
    assert announce_key("run-1", 4) == "lila/run-1/avg/4/peers"
    assert protocol("run-1", "part") == "lila.run-1.part"
    with pytest.raises(ValueError, match="round index"):
        announce_key("run-1", -1)


def test_parse_group_validates_every_field() -> None:
    good = {
        "round": 2,
        "group_id": "0123456789abcdef",
        "leader": PEERS[0],
        "members": PEERS[:3],
        "owners": [PEERS[0], PEERS[2]],
    }
    group = parse_group(good, round_index=2, max_group_size=4)
    assert group.members == tuple(PEERS[:3]) and group.index_of(PEERS[2]) == 2
    assert (group.part_of(PEERS[0]), group.part_of(PEERS[1]), group.part_of(PEERS[2])) == (0, None, 1)
    for bad, message in [
        ({**good, "round": 3}, "round 3"),
        ({**good, "group_id": "xyz"}, "hex"),
        ({**good, "members": PEERS[2::-1]}, "sorted"),
        ({**good, "leader": PEERS[3]}, "leader is not among its members"),
        ({**good, "members": ["not a peer"]}, "peer ids"),
        ({**good, "round": True}, "bool"),
        ({**good, "owners": [PEERS[3]]}, "subset"),
        ({**good, "owners": [PEERS[2]]}, "leader is not among its owners"),
    ]:
        with pytest.raises(WireError, match=message):
            parse_group(bad, round_index=2, max_group_size=4)
    with pytest.raises(WireError, match=r"allowed 1\.\.2"):
        parse_group(good, round_index=2, max_group_size=2)


# ----------------------------------------------------------------------------- state format
def _snapshot() -> StateSnapshot:
    return StateSnapshot(
        tensors={
            "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
            "half": torch.tensor([0.5, -2.0], dtype=torch.bfloat16),
            "mask": torch.tensor([True, False, True]),
            "step": torch.tensor(7, dtype=torch.int64),
            "empty": torch.zeros(0, 5),
        },
        metadata={"outer_step": 7, "note": "x"},
    )


def test_state_round_trip_is_exact_for_every_dtype() -> None:
    header, payload = pack_state(_snapshot())
    restored = unpack_state(
        header, payload, expected_shapes={k: tuple(v.shape) for k, v in _snapshot().tensors.items()}
    )
    assert restored.metadata == {"outer_step": 7, "note": "x"}
    for name, tensor in _snapshot().tensors.items():
        assert restored.tensors[name].dtype == tensor.dtype
        assert torch.equal(restored.tensors[name], tensor), name
    assert all(entry["offset"] % 64 == 0 for entry in header["tensors"])


def test_state_corruption_truncation_and_wrong_shapes_are_refused() -> None:
    header, payload = pack_state(_snapshot())
    flipped = bytearray(payload)
    flipped[3] ^= 1
    with pytest.raises(StateFormatError, match="sha256"):
        unpack_state(header, bytes(flipped))
    with pytest.raises(StateFormatError, match="announced"):
        unpack_state(header, payload[:-1])
    with pytest.raises(StateFormatError, match="needs"):
        unpack_state(
            header,
            payload,
            expected_shapes={"w": (4, 3), "half": (2,), "mask": (3,), "step": (), "empty": (0, 5)},
        )
    with pytest.raises(StateFormatError, match="missing"):
        unpack_state(header, payload, expected_shapes={"other": (1,)})
    lying = {**header, "metadata": {"outer_step": 8, "note": "x"}}
    with pytest.raises(StateFormatError, match="sha256"):
        unpack_state(lying, payload)


def test_params_hash_depends_on_values_dtype_and_shape() -> None:
    base = params_hash([torch.ones(2, 3)])
    assert base == params_hash([torch.ones(2, 3)])
    assert base != params_hash([torch.ones(3, 2)])
    assert base != params_hash([torch.ones(2, 3, dtype=torch.float64)])
    changed = torch.ones(2, 3)
    changed[1, 2] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert base != params_hash([changed])


def test_judge_names_the_minority_and_keeps_its_own_on_a_tie_unless_the_coordinator_says() -> None:
    report = judge(5, PEERS[0], "a" * 64, {PEERS[1]: "a" * 64, PEERS[2]: "b" * 64}, members=PEERS)
    assert report.reference_hash == "a" * 64
    assert report.agreeing == (PEERS[0], PEERS[1])
    assert report.disagreeing == (PEERS[2],)
    assert report.missing == (PEERS[3],)
    assert report.i_agree and not report.consistent
    tie = judge(5, PEERS[1], "b" * 64, {PEERS[0]: "a" * 64}, members=PEERS[:2])
    assert tie.reference_hash == "b" * 64 and tie.i_agree  # no re-sync to a minority, whatever the ids
    told = judge(5, PEERS[1], "b" * 64, {PEERS[0]: "a" * 64}, members=PEERS[:2], trusted="a" * 64)
    assert told.reference_hash == "a" * 64 and not told.i_agree and told.agreeing == (PEERS[0],)
    outsiders = judge(5, PEERS[0], "a" * 64, {PEERS[2]: "b" * 64, PEERS[3]: "b" * 64}, members=PEERS[:2])
    assert outsiders.reference_hash == "a" * 64 and outsiders.hashes == {PEERS[0]: "a" * 64}
