# SPDX-License-Identifier: AGPL-3.0-or-later
"""The whole bench in order (baselines, standalone rates, networks, codec errors, state sync) and its
command line: ``python -m bench.network``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench import network as package
from bench.baseline import build_model, validation_texts, with_data
from bench.network.data import DATA_SEED, default_data, shuffled_source
from bench.network.layout import (
    CODECS,
    ERROR_CODECS,
    FULL_CONFIG,
    PEER_COUNTS,
    QUICK_CONFIG,
    SYNC_PRESETS,
    BenchSettings,
    derive_layout,
)
from bench.network.measure import (
    codec_errors,
    make_repo_importable,
    measure_state_sync,
    standalone_throughput,
)
from bench.network.report import build_report, fmt, plot, plot_pareto, print_report
from bench.network.run import LOAD_AVG_WINDOW, NetworkResult, run_baselines, run_network
from lila_data import load_tokenizer
from lila_net.config import load_run_config

logger = logging.getLogger("bench.network")

CHART_NAME = "network.png"


def run_bench(settings: BenchSettings, *, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark, in order: baselines, standalone rates, networks, codec errors, state sync.
    Returns the report (see :func:`bench.network.report.build_report`)."""
    started_load = os.getloadavg()[LOAD_AVG_WINDOW]
    make_repo_importable()
    settings.workdir.mkdir(parents=True, exist_ok=True)
    data = shuffled_source(settings.data, settings.workdir, seed=DATA_SEED) if settings.shuffle else settings.data
    settings = replace(settings, data=data)
    run = with_data(load_run_config(settings.config), settings.data)
    layout = derive_layout(run, settings.peers)
    tokenizer = load_tokenizer(run.data.tokenizer)
    texts = validation_texts(run)
    params = sum(p.numel() for p in build_model(run, tokenizer).parameters())
    progress(f"debug model: {params:,} parameters; H={layout.inner_steps}, B={layout.batch_size}, "
             f"T={layout.seq_len}, budget {layout.budget:,} tokens, outer steps {layout.outer_steps}; "
             f"load {started_load:.2f}")
    config_path = settings.workdir / "bench-run.toml"
    config_path.write_text(run.to_toml())
    t0 = time.monotonic()
    baselines, delta = run_baselines(config_path, layout=layout, settings=settings)
    progress("baselines: " + ", ".join(f"({k}) batch {r.batch_size}: val bpb {r.final_bpb:.4f}"
                                       for k, r in baselines.items()) + f" ({time.monotonic() - t0:.0f} s)")
    torch.set_num_threads(settings.threads_per_peer)
    errors = codec_errors(run, delta, labels=settings.error_codecs)
    standalone: dict[int, list[float]] = {}
    networks: list[list[NetworkResult]] = []  # the repeats of each configuration
    for peers in settings.peers:

        def alone(peers: int = peers) -> list[float]:
            rates = standalone_throughput(config_path, settings.data, processes=peers,
                                          threads=settings.threads_per_peer, steps=settings.throughput_steps,
                                          workdir=settings.workdir)
            standalone.setdefault(peers, []).append(statistics.fmean(rates))
            progress(f"standalone, {peers} processes × {settings.threads_per_peer} thread(s): "
                     f"{statistics.fmean(rates):,.0f} tokens/s each")
            return rates

        before = alone()
        expected = layout.budget / peers / statistics.fmean(before)
        for codec in settings.codecs:
            runs = []
            for repeat in range(settings.repeats):
                net = run_network(run, codec=codec, peers=peers, layout=layout, settings=settings,
                                  expected_s=expected, tokenizer=tokenizer, texts=texts, repeat=repeat)
                after = alone()  # also the next run's "before": each run is bracketed by two measurements
                net.standalone = [statistics.fmean(before), statistics.fmean(after)]
                before = after
                runs.append(net)
                progress(f"network {net.name} (run {repeat + 1}): val bpb {fmt(net.final_bpb, '.4f')} in "
                         f"{net.wall_seconds:.0f} s, exits {net.exit_codes}, outer steps "
                         f"{[s.outer_steps for s in net.stats]}, load {net.load_avg:.2f}")
            networks.append(runs)
    sync = []
    for preset in settings.sync_presets:
        try:
            row = measure_state_sync(run, preset, settings)
        except Exception as exc:  # one failed measurement must not lose the whole bench's results
            logger.exception("state sync of %s failed", preset)
            row = {"preset": preset, "error": f"{type(exc).__name__}: {exc}"}
        sync.append(row)
        progress(f"state sync {preset}: {row}")
    return build_report(layout=layout, settings=settings, baselines=baselines, networks=networks,
                        standalone=standalone, errors=errors, sync=sync, params=params, started_load=started_load)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.network", description=package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="runs/bench-quick.toml (3.07 M tokens, H = 100 × 4 / N) instead of "
                        "runs/bench-full.toml (4.6 M tokens, H = 150 × 4 / N)")
    parser.add_argument("--config", type=Path, help="a bench run config (default: by --quick)")
    parser.add_argument("--data", default=default_data(), help="source spec (default: the Python docs beside the repo)")
    parser.add_argument("--only", type=int, nargs="+", choices=PEER_COUNTS, default=list(PEER_COUNTS),
                        help="peer counts to run")
    parser.add_argument("--codecs", nargs="+", choices=sorted(CODECS), default=list(CODECS))
    parser.add_argument("--threads-per-peer", type=int, default=1)
    parser.add_argument("--baseline-threads", type=int, default=1,
                        help="threads of each baseline process (they run side by side)")
    parser.add_argument("--error-codecs", nargs="+", choices=[c[0] for c in ERROR_CODECS],
                        help="codecs whose error on a real pseudo-gradient is measured (default: all but Leech "
                             "with --quick: its encoder is by far the slowest)")
    parser.add_argument("--throughput-steps", type=int, default=100,
                        help="timed steps of each standalone process (one measurement before and after every network)")
    parser.add_argument("--evals", type=int, default=15, help="evaluations along each baseline run")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each network configuration (peers get different shards from run to run: "
                             "the spread of val bpb is the noise a codec comparison has to beat)")
    parser.add_argument("--no-shuffle", action="store_true",
                        help="train on a parquet source in file order (the Python docs are sorted by topic)")
    parser.add_argument("--sync-presets", nargs="*", default=list(SYNC_PRESETS))
    parser.add_argument("--workdir", type=Path, help="keep logs and checkpoints here (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the report as JSON")
    parser.add_argument("--plot", type=Path, help=f"PNG of val bpb vs tokens (default: beside --out, {CHART_NAME})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = args.config or (QUICK_CONFIG if args.quick else FULL_CONFIG)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lila-bench-network-"))
    settings = BenchSettings(config=config, data=args.data, peers=tuple(args.only),
                             codecs=tuple(CODECS[c] for c in args.codecs), threads_per_peer=args.threads_per_peer,
                             baseline_threads=args.baseline_threads, throughput_steps=args.throughput_steps,
                             workdir=workdir, sync_presets=tuple(args.sync_presets), evals_per_baseline=args.evals,
                             error_codecs=tuple(args.error_codecs or [c[0] for c in ERROR_CODECS
                                                                     if not (args.quick and c[1] == "leech")]),
                             shuffle=not args.no_shuffle, repeats=args.repeats)
    started = time.monotonic()
    report = run_bench(settings, progress=lambda line: print(f"[{time.monotonic() - started:6.0f} s] {line}",
                                                             flush=True))
    report["details"]["bench_seconds"] = time.monotonic() - started
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    chart = args.plot or ((args.out.with_suffix(".png")) if args.out else workdir / CHART_NAME)
    plot(report, chart)
    pareto = chart.with_name(chart.stem + "-pareto.png")
    plot_pareto(report, pareto)
    print(f"plots: {chart}, {pareto}; logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
