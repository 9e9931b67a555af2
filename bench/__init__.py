# SPDX-License-Identifier: AGPL-3.0-or-later
"""Benchmarks, run by hand from the repository root; each prints a table and can write JSON (``--out``).

    python -m bench.network            a LILA network on this machine against plain training, same tokens
    python -m bench.baseline           plain single-process training on a bench run (the network's references)
    python -m bench.averaging          averaging round time and bytes over hivemind's P2P on 127.0.0.1
    python -m bench.robust             DiLoCo with a poisoned peer under ``mean`` and a robust rule
    python -m bench.coordinator_load   simulated peers heartbeating and leasing against a real coordinator
    python -m bench.codec              bits, error and throughput of every pseudo-gradient codec
    python -m bench.leech              Leech-lattice decoder throughput and normalized second moment
    python -m bench.model              the LILA variants at equal parameters and tokens
    python -m bench.export             size and bpb of exported weights against the fp32 checkpoint
    python -m bench.data               data pipeline throughput against raw tokenizer encoding

``python -m bench.<name> --help`` gives each one's method and options. Measured figures are in
``bench/results/`` and the README.
"""
