# SPDX-License-Identifier: AGPL-3.0-or-later
"""A DHT record as evidence: what its writer claimed, signed by the writer itself.

Every record of the run's DHT carries its writer's credential and the writer's RSA signature over (key,
subkey, value, expiration) (:mod:`lila_net.dht.security`). A reader gets the whole signed envelope, so it
can forward a record to the coordinator, and the coordinator can check it without trusting the reader:
the record proves what the *writer* announced. Unlike strike reports (what a part owner says it saw,
which two colluding tokens can invent), such evidence cannot be forged against an honest peer, so one
report is enough to act on.

What is acted on: a state record announcing a false claim (:mod:`lila_net.claims`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils import MSGPackSerializer

from lila_net.credentials import Credential, CredentialVerifier
from lila_net.dht.keys import state_key
from lila_net.dht.records import RecordError
from lila_net.dht.security import check_signed_record

MAX_ENVELOPE_BYTES = 8192  # credential + signature + a state record, with room to spare


@dataclass(frozen=True)
class SignedRecord:
    """One DHT record as a reader received it: key name, writer (subkey: a libp2p id), the signed
    envelope (``DhtRecordValidator.sign_value``'s output) and the record's expiration (DHT time)."""

    key: str
    writer: str
    envelope: bytes
    expiration: float


@dataclass(frozen=True)
class StateClaim:
    """What a verified state record says: its writer's credential and the outer step it announced."""

    credential: Credential
    outer_step: int


def verify_state_claim(record: SignedRecord, verifier: CredentialVerifier, *, run_id: str) -> StateClaim:
    """Check ``record`` is a state record of run ``run_id`` signed by its writer under a credential of the
    run's authority, and return what it claims; raises RecordError/CredentialError (ValueError) naming
    what is wrong otherwise. Expired credentials and records still count: evidence outlives its record."""
    if len(record.envelope) > MAX_ENVELOPE_BYTES:
        raise RecordError(f"record envelope of {len(record.envelope)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    if record.key != state_key(run_id):
        raise RecordError(f"record key {record.key[:80]!r} is not this run's state key {state_key(run_id)!r}")
    dht_record = DHTRecord(DHTID.generate(source=record.key).to_bytes(), MSGPackSerializer.dumps(record.writer),
                           record.envelope, record.expiration)
    credential, _, value = check_signed_record(dht_record, verifier, max_lifetime_s=float("inf"))
    step = json.loads(value.decode())["outer_step"]  # check_signed_record checked the schema
    return StateClaim(credential=credential, outer_step=int(step))

