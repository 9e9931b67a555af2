# SPDX-License-Identifier: AGPL-3.0-or-later
"""The decisive measurement: a LILA network on this machine against plain training, same tokens.

All in one run, same model, same data, same token budget:

1. plain training in one process (``bench.baseline``, the peer's own InnerTrainer and data readers):
   (a) with the per-peer batch B, (b) with the global batch N×B for every N — the synchronous
   data-parallel equivalent, the fair reference. They run side by side, one thread each;
2. the network (coordinator + N ``lila-peer join`` processes on 127.0.0.1, lila_run.local_network) with
   N = 2 and 4 peers and fp32 pseudo-gradients;
3. the same with the E8 lattice codec at 4 and 2 bits per coordinate;
4. the same with the sparse codecs (1 % top-k per chunk, error feedback): ``sparse-e8`` at 2 and 4 bits
   per kept value and the SparseLoCo-style scalar baseline ``sparse-int-2``. Their rounds gather the
   contributions (``peer.averaging.gather``).

Layout: every network trains the run's token budget in the same K = 15 outer steps; the run's
``inner_steps`` is H of 4 peers and N peers take H × 4 / N (see ``bench.network.layout.derive_layout``).
The Python docs are sorted by topic, so the bench trains on a copy with shuffled rows
(``bench.network.data.shuffled_source``).

Per configuration it reports the final validation bits per byte (evaluated here on the checkpoint the
network leaves, with the same texts and evaluator as the baselines) and its ratio to (b) (``bpb_ratio``)
and to (a); the curve of val bpb against tokens, evaluated here after the run on every outer step's
checkpoint of one peer (the peers hold identical parameters; they run with ``--eval-every 0``, because
monitoring is not a cost of taking part and the baselines' throughput excludes it too); each peer's
tokens/s inside the network — tokens over the wall time of whole outer cycles (inner steps, round
barrier, averaging round, verification, state publishing, reports, checkpoint) — divided by the tokens/s
of the same process setup (model, batch, torch threads, data reading) training alone with no network,
measured with N such processes side by side right before and right after each network run (a shared
host's speed drifts within minutes, so a ratio is only fair against measurements next to it)
(``throughput_ratio``, the compute utilization); bytes sent per peer per outer step and the communication
reduction against fp32 per-step data-parallel all-reduce of the same model (the fp32 round's measured
bytes × H / this round's bytes) and per round (``round_reduction``: the fp32 round's bytes at the same
peer count / this round's; the ``-pareto.png`` plot puts val bpb against bytes per round); where a cycle's time goes (inner period, matchmaking, all-reduce,
after-round work, split into ``phases``). It also measures the compressed update's relative error per codec on a real
pseudo-gradient (and inside the network, with error feedback), the time from launching ``lila-peer join``
to the first training step, and a joiner's state download from a running peer for the ``debug`` and
``lila-20m`` presets. Peers are followed through their diaries (``outer-steps.jsonl``, peer/events.py),
their Prometheus ``/metrics`` (sampled every ``SCRAPE_INTERVAL_S``) and the coordinator's ``/api/status``.

    python -m bench.network --quick --out network.json            # runs/bench-quick.toml
    python -m bench.network --quick --repeats 2 --out n.json      # run-to-run spread of every network
    python -m bench.network --out network-full.json               # runs/bench-full.toml: H = 150 / 300, 4.6 M tokens
    python -m bench.network --quick --only 2 --codecs fp32 e8-4   # a subset

Threads: every peer gets ``--threads-per-peer`` (1): on a 2-core machine 2 peers × 1 thread fill the
cores and 4 peers oversubscribe them (reported, but judge utilization on the 2-peer runs).

Modules: ``layout`` (settings, codecs, layout, run configs), ``watch`` (Prometheus sampling, diaries,
per-peer stats), ``measure`` (standalone throughput, checkpoint curve, state sync, codec errors), ``run``
(a network, the baselines), ``report`` (build, print, plot), ``data`` (shuffled source), ``cli`` (the
whole bench in order, flags).
"""
