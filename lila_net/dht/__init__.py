# SPDX-License-Identifier: AGPL-3.0-or-later
"""The run's DHT: key names (``keys``), record schemas (``records``), signed records and admitted-only
access (``security``) and starting a node (``node``)."""
