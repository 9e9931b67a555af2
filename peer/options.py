# SPDX-License-Identifier: AGPL-3.0-or-later
"""What ``lila-peer join`` is told on its command line (its flags take their defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lila_net.address import parse_host_port
from lila_net.config import ConfigError, Section, setting

from .hardware import DEVICE_CHOICES
from .reachability import parse_announce


@dataclass(frozen=True, kw_only=True)
class PeerOptions(Section):
    """Everything ``lila-peer join`` is told on its command line; checked on construction.

    ``host``/``port``: where this peer listens for other peers (default every interface, a free port);
    ``announce``: ``HOST:PORT`` a router forwards to this peer (the coordinator dials it to check). What the
    peer announces is decided by the dial-back check of :mod:`peer.reachability`, never by ``host``.
    ``tls``/``tls_ca``: dial the coordinator over TLS, checked against the system's certificate authorities
    or against ``tls_ca`` (see :mod:`lila_net.tls`).
    ``client_mode``: only outgoing connections (the peer then never owns a part nor relays).
    ``straggler_wait_s``: how long this peer waits at each round for the peers it expects (None: the
    run's ``averaging_timeout_s``); see :mod:`peer.round_sync` for how to tune it. ``progress``: the
    progress bar (None: only when stderr is a terminal). ``throttle``: run at this fraction of the
    machine's speed (tests and benchmarks of peers of different speeds; a hidden flag, never a volunteer's
    setting: ``peer.rounds.throttle``). ``record_every``: every this many rounds, save the vector this
    peer is about to send (pseudo-gradient plus error-feedback residual, fp32, before encoding) to
    ``WORKDIR/pseudo-gradients/`` for the codec benchmarks (``python -m bench.codec_truth``; 0: never; about
    4 bytes per parameter per file; a hidden flag: ``peer.recording``).

    ``eval_every``: evaluate the validation texts every this many outer steps (0: never). Every peer of a
    round holds the same parameters, and rounds are synchronous, so an evaluation delays the whole network
    by its duration: raise it on slow hardware or when someone else watches the run (``python -m
    bench.network`` reports the evaluation's share of a cycle). ``keep_checkpoints``: how many outer
    steps' checkpoints stay on disk (older ones are deleted after each successful write); a peer resumes
    from its newest. ``checkpoint_every`` / ``telemetry_every``: every this many outer steps (0: never).
    """

    coordinator: str = setting()
    token: str = setting()
    name: str = setting("")
    device: str = setting("auto", choices=lambda: DEVICE_CHOICES)
    workdir: Path = setting(Path("lila-peer-workdir"))
    metrics_host: str = setting("127.0.0.1")
    metrics_port: int | None = setting(0, ge=0, le=65535, label="--metrics-port")
    max_outer_steps: int | None = setting(None, ge=0, label="--max-outer-steps")
    host: str = setting("0.0.0.0")
    port: int = setting(0, ge=0, le=65535, hint="0 picks a free port", label="--port")
    announce: str | None = setting(None, label="--announce")
    tls: bool = setting(False)
    tls_ca: Path | None = setting(None, label="--tls-ca")
    client_mode: bool = setting(False)
    checkpoint_every: int = setting(1, ge=0)
    keep_checkpoints: int = setting(2, ge=1, hint="a peer resumes from its newest checkpoint", label="--keep-checkpoints")
    telemetry_every: int = setting(5, ge=0)
    eval_every: int = setting(1, ge=0, hint="0: never evaluate", label="--eval-every")
    threads: int | None = setting(None, ge=1, label="--threads")
    straggler_wait_s: float | None = setting(None, ge=0, hint="seconds", label="--straggler-wait")
    progress: bool | None = setting(None)
    throttle: float = setting(1.0, gt=0, le=1, label="--throttle")
    record_every: int = setting(0, ge=0, hint="0: never", label="--record-pseudo-gradients")

    def check(self) -> None:
        try:
            parse_host_port(self.coordinator, what="coordinator address",
                            example="coordinator.example.org:7600 (the address the run's organizer gave you)")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.announce is not None:
            try:
                parse_announce(self.announce)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.announce is not None and self.client_mode:
            raise ConfigError("--announce and --client-mode contradict each other: a client is never dialed; "
                              "drop one of them")
        if self.tls_ca is not None and not Path(self.tls_ca).is_file():
            raise ConfigError(f"--tls-ca {self.tls_ca}: no such file; pass the PEM certificate of the authority "
                              "that signed the coordinator's certificate")
        if not self.token:
            raise ConfigError("no join token: pass --token or set LILA_JOIN_TOKEN (the run's organizer creates "
                              "one with `lila-coordinator token create`)")
