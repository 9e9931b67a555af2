# SPDX-License-Identifier: AGPL-3.0-or-later
"""What the coordinator and the peers share: the contracts of one LILA network.

* ``config`` — the run config (TOML, typed sections that validate themselves on construction);
* ``credentials`` — averaging credentials: the format, the coordinator's signing authority and the
  verifier every peer runs;
* ``dht`` — the run's DHT key names, record schemas, record signing and admission
  (``dht.security``, the only hivemind import here) and DHT start-up (``dht.node``);
* ``aggregation`` — the aggregation rules a part owner applies (every peer must aggregate the same way,
  or the round's hash check fails);
* ``proto`` — Python code generated from ``proto/lila/v1``.

Layering (``tests/unit/net/test_layers.py`` fails when an import crosses it): ``lila_model``,
``lila_data`` and ``lila_codec`` are below this package; ``coordinator`` and ``peer`` import it and never
each other; ``lila_run`` is the top layer that nothing imports.
"""
