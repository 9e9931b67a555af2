# SPDX-License-Identifier: AGPL-3.0-or-later
"""The bench's report: the JSON (``configs`` and ``details``), the console tables and the plot of
validation bpb against tokens."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from bench.baseline import BaselineResult
from bench.network.layout import CODECS, BenchSettings, Layout
from bench.network.run import NetworkResult
from bench.network.watch import PeerStats

FP32_BYTES = 4


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build_report(*, layout: Layout, settings: BenchSettings, baselines: dict[str, BaselineResult],
                 networks: list[list[NetworkResult]], standalone: dict[int, list[float]],
                 errors: list[dict[str, Any]], sync: list[dict[str, Any]], params: int,
                 started_load: float) -> dict[str, Any]:
    """The report: ``configs`` (a row per baseline and network configuration), ``join_to_first_step_s``,
    ``state_sync_s`` and the ``details``."""
    configs: list[dict[str, Any]] = []
    a = baselines["a"].final_bpb
    for key, res in baselines.items():
        # (a) against each (b) is in the network rows' two ratios; a (b) row is its own reference
        configs.append({"name": f"baseline-{key}", "peers": 1, "bits": 32, "val_bpb": res.final_bpb,
                        "bpb_ratio": 1.0 if key.startswith("b") else None,
                        "bpb_ratio_a": _ratio(res.final_bpb, a), "batch_size": res.batch_size,
                        "tokens": res.tokens, "tokens_per_s_per_peer": res.tokens_per_s, "threads": res.threads,
                        "throughput_ratio": None, "bytes_per_outer_step": 0, "comm_reduction": None,
                        "round_reduction": None,
                        "curve": [[p.tokens, p.val_bpb] for p in res.curve]})
    fp32_bytes = {runs[0].peers: _median([s.bytes_per_outer_step for n in runs for s in n.stats])
                  for runs in networks if runs[0].codec.name == "fp32"}
    for runs in networks:
        net = runs[0]
        every = [s for n in runs for s in n.stats]
        finals = [n.final_bpb for n in runs if n.final_bpb is not None]
        val_bpb = statistics.fmean(finals) if finals else None
        # each run against the standalone rate measured right before and after it
        alones = [statistics.fmean(n.standalone) for n in runs if n.standalone]
        alone = statistics.fmean(alones) if alones else None
        rate = _median([s.tokens_per_s for s in every])
        sent = _median([s.bytes_per_outer_step for s in every])
        theory_fp32 = 2 * (net.peers - 1) / net.peers * FP32_BYTES * params  # ring all-reduce, per step
        per_step_fp32 = fp32_bytes.get(net.peers) or theory_fp32
        b = baselines.get(f"b{net.peers}")

        def pooled(attr: str, peers: list[PeerStats] = every) -> float | None:
            """The median of a per-round list over every peer's rounds."""
            return _median([v for p in peers for v in getattr(p, attr)])

        cycle = _median([s.cycle_seconds / (s.outer_steps - 1) for s in every if s.outer_steps > 1])
        configs.append({
            "name": net.name, "peers": net.peers, "bits": net.codec.bits, "val_bpb": val_bpb,
            "bpb_ratio": _ratio(val_bpb, b.final_bpb if b else None), "bpb_ratio_a": _ratio(val_bpb, a),
            "tokens_per_s_per_peer": rate, "throughput_ratio": _ratio(rate, alone),
            "bytes_per_outer_step": sent,
            # fp32 bytes per round of the same peer count over this config's (one round per outer step)
            "round_reduction": _ratio(fp32_bytes.get(net.peers), sent),
            "comm_reduction": per_step_fp32 * layout.inner_steps[net.peers] / sent if sent else None,
            "comm_reduction_vs_ring_theory": theory_fp32 * layout.inner_steps[net.peers] / sent if sent else None,
            "inner_steps": layout.inner_steps[net.peers], "val_bpb_runs": [n.final_bpb for n in runs],
            "bytes_received_per_outer_step": pooled("bytes_received"),
            # what a peer sends per coordinate of its share of a ring all-reduce (codec rate + overhead)
            "wire_bits_per_coord": sent * 8 / (theory_fp32 / FP32_BYTES) if sent else None,
            "standalone_tokens_per_s": alone, "step_tokens_per_s": _median([s.step_tokens_per_s for s in every]),
            "in_steps_fraction": _median([s.in_steps_fraction for s in every]),
            "cycle_s": cycle, "inner_s": pooled("inner_s"), "round_s": pooled("round_s"),
            "matchmaking_s": pooled("matchmaking_s"), "allreduce_s": pooled("allreduce_s"),
            "after_round_s": pooled("after_s"),
            "phases_s": {phase: _median([v for s in every for v in s.phases.get(phase, [])])
                         for phase in sorted({p for s in every for p in s.phases})},
            "standalone_around_runs": [n.standalone for n in runs],
            "outer_steps": [s.outer_steps for s in every], "outer_steps_target": net.outer_steps_target,
            "rounds": [s.rounds for s in every], "group_sizes": sorted({g for s in every for g in s.group_sizes}),
            "resyncs": sum(s.resyncs for s in every), "params_consistent": all(n.consistent for n in runs),
            "codec_relative_error_in_network": _median([s.codec_relative_error for s in every]),
            "reported_val_bpb": [n.curve[-1][1] if n.curve else None for n in runs],
            "wall_s": [n.wall_seconds for n in runs], "exit_codes": [n.exit_codes for n in runs],
            "load_avg_1min": statistics.fmean(n.load_avg for n in runs),
            "join_to_first_step_s": [s.join_to_first_step_s for s in every],
            "curve": [list(p) for p in net.curve], "curves": [[list(p) for p in n.curve] for n in runs],
        })
    joins = [s.join_to_first_step_s for runs in networks for n in runs for s in n.stats
             if s.join_to_first_step_s is not None]
    return {
        "configs": configs,
        "join_to_first_step_s": _median(joins),
        "state_sync_s": {row["preset"]: row.get("state_sync_s") for row in sync},
        "details": {
            "model": {"preset": "debug", "params": params},
            "layout": {"inner_steps": {str(k): v for k, v in layout.inner_steps.items()},
                       "batch_size": layout.batch_size, "seq_len": layout.seq_len, "budget_tokens": layout.budget,
                       "outer_steps": layout.outer_steps},
            "data": settings.data, "threads_per_peer": settings.threads_per_peer,
            "baseline_threads": settings.baseline_threads,
            # every standalone measurement of N processes side by side, in bench order (mean of the N)
            "standalone_tokens_per_s": {str(k): v for k, v in standalone.items()},
            "join_to_first_step_s": {"median": _median(joins), "max": max(joins) if joins else None},
            "state_sync": sync, "codec_errors": errors, "load_avg_1min_at_start": started_load,
        },
    }


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, or a dash when it is missing or NaN."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_report(report: dict[str, Any]) -> None:
    print()
    print(f"{'config':<16} {'peers':>5} {'bits':>4} {'val bpb':>8} {'/ (b)':>6} {'/ (a)':>6} {'tok/s/peer':>10} "
          f"{'alone':>7} {'util':>5} {'B/outer step':>12} {'round red.':>10} {'comm red.':>9} {'round s':>7} "
          f"{'rel err':>7}")
    for c in report["configs"]:
        print(f"{c['name']:<16} {c['peers']:>5} {c['bits']:>4} {fmt(c['val_bpb'], '.4f'):>8} "
              f"{fmt(c['bpb_ratio'], '.3f'):>6} {fmt(c['bpb_ratio_a'], '.3f'):>6} "
              f"{fmt(c['tokens_per_s_per_peer'], ',.0f'):>10} {fmt(c.get('standalone_tokens_per_s'), ',.0f'):>7} "
              f"{fmt(c['throughput_ratio'], '.2f'):>5} {fmt(c['bytes_per_outer_step'], ',.0f'):>12} "
              f"{fmt(c.get('round_reduction'), ',.1f'):>10} {fmt(c['comm_reduction'], ',.0f'):>9} {fmt(c.get('round_s'), '.2f'):>7} "
              f"{fmt(c.get('codec_relative_error_in_network'), '.4f'):>7}")
    details = report["details"]
    print()
    print(f"{'config':<12} {'val bpb of each run':<28}", *(f"{c['name']}: " + " ".join(
        fmt(v, ".4f") for v in c["val_bpb_runs"]) for c in report["configs"] if c["peers"] > 1), sep="\n  ")
    print()
    print(f"{'config':<12} {'cycle s':>7} {'inner s':>7} {'round s':>7} {'(match)':>7} {'(reduce)':>8} "
          f"{'after s':>7} {'in steps':>8} {'groups':>7} {'resyncs':>7} {'same θ':>6} {'load':>5}")
    for c in report["configs"]:
        if c["peers"] == 1:
            continue
        print(f"{c['name']:<12} {fmt(c['cycle_s'], '.2f'):>7} {fmt(c['inner_s'], '.2f'):>7} "
              f"{fmt(c['round_s'], '.2f'):>7} {fmt(c['matchmaking_s'], '.2f'):>7} {fmt(c['allreduce_s'], '.2f'):>8} "
              f"{fmt(c['after_round_s'], '.2f'):>7} {fmt(c.get('in_steps_fraction'), '.3f'):>8} "
              f"{','.join(map(str, c['group_sizes'])):>7} {c['resyncs']:>7} "
              f"{'yes' if c['params_consistent'] else 'NO':>6} {c['load_avg_1min']:>5.2f}")
    print()
    print("after-round phases, median s per outer step:")
    for c in report["configs"]:
        if c["peers"] > 1:
            print(f"  {c['name']:<12}", "  ".join(f"{k} {fmt(v, '.3f')}" for k, v in c.get("phases_s", {}).items()))
    print()
    print(f"{'codec':<8} {'bits/coord':>10} {'rel. error':>10} {'cosine':>8} {'SNR dB':>7} {'encode s':>8}"
          "   (one real pseudo-gradient)")
    for row in details["codec_errors"]:
        print(f"{row['codec']:<8} {row['bits_per_coord']:>10.3f} {row['relative_error']:>10.4f} {row['cosine']:>8.5f} "
              f"{row['snr_db']:>7.2f} {row['encode_s']:>8.3f}")
    print()
    join = details["join_to_first_step_s"]
    print(f"join → first step: median {fmt(join['median'], '.1f')} s, max {fmt(join['max'], '.1f')} s "
          "(fresh peers, from the creation of the `lila-peer join` process)")
    for row in details["state_sync"]:
        print(f"state sync {row['preset']}: {fmt(row.get('state_sync_s'), '.2f')} s, "
              f"{fmt(row.get('bytes'), ',.0f')} bytes; joiner's join → first step "
              f"{fmt(row.get('join_to_first_step_s'), '.1f')} s{'  ' + row['error'] if 'error' in row else ''}")


def plot(report: dict[str, Any], path: Path) -> None:
    """Validation bpb against tokens for every configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    families = [*CODECS, *(c["name"] for c in report["configs"] if c["peers"] == 1)]
    colors = dict(zip(families, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for c in report["configs"]:
        if c["peers"] == 1:  # baselines dashed, 2-peer networks solid, 4-peer dash-dotted
            color, style, curves = colors[c["name"]], "--", [c["curve"]]
        else:
            color, style = colors[c["name"].split("-", 1)[1]], "-" if c["peers"] == 2 else "-."
            curves = c.get("curves") or [c["curve"]]
        for index, curve in enumerate(curves):
            points = [(t, v) for t, v in curve if v is not None and not math.isnan(v)]
            if points:
                ax.plot([t for t, _ in points], [v for _, v in points], style, color=color,
                        linewidth=1.0 if index else 1.6, alpha=1.0 if index == 0 else 0.5,
                        label=None if index else f"{c['name']} ({fmt(c['val_bpb'], '.3f')})")
    ax.set_xlabel("training tokens (all peers)")
    ax.set_ylabel("validation bits per byte")
    layout = report["details"]["layout"]
    hs = ", ".join(f"H={h} ({n} peers)" for n, h in layout["inner_steps"].items())
    ax.set_title(f"LILA network vs plain training: debug model, {layout['outer_steps']} outer steps, {hs}, "
                 f"B={layout['batch_size']}×{layout['seq_len']}", fontsize=9)
    finals = [c["val_bpb"] for c in report["configs"] if c["val_bpb"] is not None]
    if finals:
        ax.set_ylim(min(finals) * 0.97, max(finals) * 1.6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """Validation bpb against bytes per round (log scale), one point per network, and each peer count's
    Pareto front (no other config of that peer count is both smaller and better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for peers, marker in ((2, "o"), (4, "s")):
        rows = sorted((c for c in report["configs"] if c["peers"] == peers and c["val_bpb"] is not None
                       and c["bytes_per_outer_step"]), key=lambda c: c["bytes_per_outer_step"])
        if not rows:
            continue
        ax.scatter([c["bytes_per_outer_step"] for c in rows], [c["val_bpb"] for c in rows], marker=marker,
                   label=f"{peers} peers")
        for c in rows:
            ax.annotate(c["name"].split("-", 1)[1], (c["bytes_per_outer_step"], c["val_bpb"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        front, best = [], math.inf
        for c in rows:
            if c["val_bpb"] < best:
                front.append(c)
                best = c["val_bpb"]
        ax.plot([c["bytes_per_outer_step"] for c in front], [c["val_bpb"] for c in front], "--", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("bytes one peer sends per round (log)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("val bpb against bytes per round: Pareto front per peer count (dashed)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
