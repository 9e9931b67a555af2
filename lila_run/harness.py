# SPDX-License-Identifier: AGPL-3.0-or-later
"""Small runs on one machine, for tests and benchmarks: the run config, the corpus and the coordinator.

* :func:`small_run` is a :class:`~lila_net.config.RunConfig` that trains in seconds (the ``debug`` model,
  the tiny ``fineweb-edu-2048`` tokenizer, one stage of short sequences, fast coordinator timing); every
  section takes overrides, so that a test states only the values its assertions depend on.
  :func:`write_run_config` writes one as ``run.toml``.
* :func:`write_corpus` writes the first documents of the bundled FineWeb-Edu sample as a JSON-lines
  source and returns its spec (``jsonl:PATH``).
* :class:`LocalCoordinator` is ``lila-coordinator serve`` (see :mod:`coordinator.launch`) on local ports
  with its database, ready file and log in one folder: it creates join tokens, starts (and restarts, on
  the same database) in its own process group, so that a test's process reaper can track it and stopping
  it stops its DHT children too, and waits until it serves. :func:`start_coordinator` creates a token and
  starts one.
* :func:`free_port` is a free TCP port on 127.0.0.1; :class:`RawCodec` sends tensors as plain fp32/fp16
  bytes (the reference codec of averaging tests and benchmarks).

Arguments are keyword-only, except the one thing a function acts on (a path, a config). Nothing here
prints: a coordinator that does not serve raises with its log's tail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.launch import DEFAULT_READY_TIMEOUT_S, serve_command, wait_for_ready
from lila_net.config import RunConfig

BUNDLED_SAMPLE = "bundled:fineweb-edu-sample"
SMALL_TOKENIZER = "fineweb-edu-2048"
SMALL_SEQ_LEN = 64
SMALL_STAGE_TOKENS = 1_000_000
STOP_GRACE_S = 30.0

# The base of every small run; small_run's overrides are merged into it section by section.
_SMALL_RUN: dict[str, Any] = {
    "run": {"seed": 0},
    "model": {"preset": "debug"},
    "data": {"tokenizer": SMALL_TOKENIZER},
    "schedule": {"peak_lr": 1e-3, "warmup_tokens": 0, "decay_tokens": 0},
    "stage": {"name": "only", "tokens": SMALL_STAGE_TOKENS, "seq_len": SMALL_SEQ_LEN},
    "coordinator": {"heartbeat_interval_s": 1.0, "lease_timeout_s": 30.0},
}


def small_run(
    *,
    name: str,
    sources: Mapping[str, str] | None = None,
    stage: Mapping[str, Any] | None = None,
    stages: Sequence[Mapping[str, Any]] | None = None,
    schedule: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    diloco: Mapping[str, Any] | None = None,
    codec: Mapping[str, Any] | None = None,
    trust: Mapping[str, Any] | None = None,
    coordinator: Mapping[str, Any] | None = None,
) -> RunConfig:
    """A run that trains in seconds, named ``name``, over ``sources`` (name -> spec; default the bundled
    sample as ``fineweb``).

    The curriculum is one stage (``only``: 1 M tokens of 64-token sequences, mixing every source equally)
    changed by ``stage``, or the given ``stages`` (a stage without a mixture mixes every source equally);
    ``schedule`` changes the learning-rate schedule (peak 1e-3, no warmup, no decay). Every other
    argument is merged into its section of the base (``[run] seed = 0``, the ``debug`` model, the
    ``fineweb-edu-2048`` tokenizer, heartbeats every 1 s and a 30 s lease timeout); sections not given
    keep their defaults. The config checks itself as it is built.
    """
    sources = dict(sources if sources is not None else {"fineweb": BUNDLED_SAMPLE})
    mixture = {source: 1.0 for source in sources}
    if stages is None:
        stages = [{**_SMALL_RUN["stage"], **(stage or {})}]
    elif stage is not None:
        raise ValueError("small_run takes stage (changes to the one default stage) or stages, not both")
    raw = {
        "run": {**_SMALL_RUN["run"], "name": name, **(run or {})},
        "model": {**_SMALL_RUN["model"], **(model or {})},
        "data": {**_SMALL_RUN["data"], **(data or {}), "sources": sources},
        "curriculum": {
            "stages": [{"mixture": mixture, **s} for s in stages],
            "schedule": {**_SMALL_RUN["schedule"], **(schedule or {})},
        },
        "diloco": dict(diloco or {}),
        "codec": dict(codec or {}),
        "trust": dict(trust or {}),
        "coordinator": {**_SMALL_RUN["coordinator"], **(coordinator or {})},
    }
    return RunConfig.from_dict(raw)


def write_run_config(config: RunConfig, directory: str | Path) -> Path:
    """Write ``config`` to ``directory/run.toml`` (the folder is created) and return that path."""
    path = Path(directory) / "run.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_toml())
    return path


def write_corpus(path: str | Path, *, docs: int, max_chars: int | None = None, keep_ids: bool = False,
                 source: str = BUNDLED_SAMPLE) -> str:
    """Write the first ``docs`` non-empty documents of ``source`` as JSON lines to ``path`` and return the
    source spec ``jsonl:PATH``. Texts are cut to ``max_chars`` when given; ids are ``doc-0``, ``doc-1``, …
    unless ``keep_ids`` keeps the source's own (the ids decide which documents are held out for
    validation)."""
    from lila_data import iter_texts, open_source

    path = Path(path)
    if keep_ids:
        rows = []
        for _, _, table in open_source(source).iter_tables(columns=("id", "text")):
            ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
            rows.extend((doc_id, text) for doc_id, text in zip(ids, texts, strict=True) if text)
            if len(rows) >= docs:
                break
        rows = rows[:docs]
    else:
        rows = [(f"doc-{index}", text) for index, text in enumerate(iter_texts(source, max_docs=docs))]
    with path.open("w") as out:
        for doc_id, text in rows:
            text = text if max_chars is None else text[:max_chars]
            out.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return f"jsonl:{path}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a process that must keep its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_join_token(db: str | Path, *, label: str) -> str:
    """A new join token in the coordinator database ``db`` (created if needed), as
    ``lila-coordinator token create`` makes it."""
    from coordinator.auth import create_join_token as create
    from coordinator.storage import Storage

    storage = Storage(Path(db))
    try:
        return create(storage, label=label, now=time.time())[1]
    finally:
        storage.close()


@dataclass(kw_only=True)
class LocalCoordinator:
    """``lila-coordinator serve`` of ``config`` on 127.0.0.1, with ``coordinator.db``, its ready file and
    ``coordinator.log`` in ``workdir``.

    ``grpc`` is ``127.0.0.1:0`` (any free port) unless a restart must find the same one; ``dht`` starts its
    DHT bootstrap node; ``extra`` goes to ``serve`` as is. Each :meth:`start` runs a new process (on the
    same database) through ``spawn`` (``subprocess.Popen`` or a test's process reaper's ``spawn``) in its
    own process group, and waits for it to serve.
    """

    config: str | Path
    workdir: Path
    dht: bool = False
    grpc: str = "127.0.0.1:0"
    extra: Sequence[str] = ()
    python: str = sys.executable
    log_level: str = "INFO"
    env: Mapping[str, str] | None = None
    spawn: Callable[..., subprocess.Popen] = subprocess.Popen
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    proc: subprocess.Popen | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    token: str = ""

    @property
    def db(self) -> Path:
        return self.workdir / "coordinator.db"

    @property
    def log(self) -> Path:
        return self.workdir / "coordinator.log"

    @property
    def ready_file(self) -> Path:
        return self.workdir / "coordinator.ready.json"

    def create_token(self, *, label: str = "test") -> str:
        """A new join token in its database; the first one is also kept as :attr:`token`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        token = new_join_token(self.db, label=label)
        self.token = self.token or token
        return token

    def start(self) -> dict[str, Any]:
        """Start it and wait until it serves; returns (and keeps as :attr:`ready`) its ready file."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        argv = serve_command(config=self.config, db=self.db, ready_file=self.ready_file, grpc=self.grpc,
                             dht=self.dht, extra=self.extra, python=self.python, log_level=self.log_level)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self.log.open("ab") as log:
            self.proc = self.spawn(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        self.ready = wait_for_ready(self.proc, self.ready_file, timeout_s=self.ready_timeout_s, log=self.log)
        return self.ready

    def stop(self, sig: int = signal.SIGTERM, *, timeout_s: float = STOP_GRACE_S) -> int | None:
        """Send ``sig`` to its process group and wait up to ``timeout_s``; what is still alive then is
        killed. Returns its exit code (None when it never started)."""
        if self.proc is None:
            return None
        signal_group(self.proc, sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        signal_group(self.proc, signal.SIGKILL)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL its whole process group (a crash) and wait for it."""
        self.stop(signal.SIGKILL)


def start_coordinator(*, config: str | Path, workdir: Path, label: str = "test",
                      **options: Any) -> LocalCoordinator:
    """A :class:`LocalCoordinator` (``options`` are its fields) with one join token (:attr:`token`),
    started and serving."""
    coordinator = LocalCoordinator(config=config, workdir=workdir, **options)
    coordinator.create_token(label=label)
    coordinator.start()
    return coordinator


class RawCodec:
    """Tensors as their plain ``dtype`` bytes (fp32 is exact, fp16 rounds): the reference codec."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def encode(self, tensor: Any, *, seed: int = 0) -> bytes:
        return tensor.detach().to(self.dtype).contiguous().numpy().tobytes()

    def decode(self, payload: bytes) -> Any:
        import torch

        return torch.frombuffer(bytearray(payload), dtype=self.dtype).to(torch.float32)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process's whole group: its hivemind children (DHT, p2pd) may outlive it."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
