# SPDX-License-Identifier: AGPL-3.0-or-later
"""The LILA Network coordinator: what a run's organizer starts and every volunteer talks to first.

Layers, from pure to I/O:

* ``plan`` (the data plan as plain values), ``state``, ``events``, ``actions`` and ``core`` — the
  scheduler as a pure state machine ``core.apply(state, event, now) -> (state, actions)``;
* ``storage`` — the SQLite ledger (WAL, versioned migrations, restart from tables);
* ``engine`` — applies events in batches and commits each batch before answering;
* ``auth``, ``ratelimit``, ``validation``, ``server`` — the ``lila.v1.Coordinator`` gRPC service;
* ``status``, ``metrics``, ``web`` — snapshot, Prometheus and the status page; ``planning`` — run
  config to data plan with ``lila_data``;
* ``app`` assembles one coordinator, ``cli`` is ``lila-coordinator``, ``launch`` starts it as a subprocess.

What it shares with the peers (the run config, averaging credentials, the DHT node and its records,
the generated proto) lives in ``lila_net``; the coordinator never imports ``peer``.
"""
