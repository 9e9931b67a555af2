# SPDX-License-Identifier: AGPL-3.0-or-later
"""Issue 16, finding 10 (plain-text tokens): ``lila-coordinator serve --tls-cert --tls-key`` against real
clients. A peer that trusts the coordinator's CA (``--tls-ca``) joins over TLS; a plain-text client and one
that trusts only the system's authorities are refused before any token is read."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lila_net.proto import coordinator_pb2 as pb
from lila_net.proto import coordinator_pb2_grpc as pb_grpc
from lila_net.tls import TlsError, channel_credentials, server_tls
from lila_run.harness import LocalCoordinator, small_run, write_corpus, write_run_config
from peer.coordinator_client import CoordinatorClient

RPC_TIMEOUT_S = 5.0


def _self_signed(directory):
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lila test coordinator")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tokens_cross_the_network_only_inside_tls(tmp_path, python, procs):
    cert, key = _self_signed(tmp_path)
    run = small_run(name="tls", sources={"docs": write_corpus(tmp_path / "docs.jsonl", docs=12)},
                    stage={"name": "all", "tokens": 100_000})
    coordinator = LocalCoordinator(config=write_run_config(run, tmp_path), workdir=tmp_path, python=python,
                                   spawn=procs.spawn, extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    token = coordinator.create_token()
    address = coordinator.start()["grpc"]

    client = CoordinatorClient(address, retry_for_s=0.0, credentials=channel_credentials(tls=True, ca=cert))
    try:
        joined = client.join(join_token=token, peer_name="alice", device_type="cpu", device_name="test",
                             memory_bytes=0, cpu_cores=1)
        assert joined.peer_id.startswith("p-")
    finally:
        client.close()

    for credentials in (None, channel_credentials(tls=True, ca=None)):  # plain text; system CAs only
        channel = (grpc.insecure_channel(address) if credentials is None
                   else grpc.secure_channel(address, credentials))
        with channel:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.CoordinatorStub(channel).Join(pb.JoinRequest(join_token=token, peer_name="eve"),
                                                      timeout=RPC_TIMEOUT_S)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_tls_flags_name_the_problem(tmp_path):
    with pytest.raises(TlsError, match="--tls-cert and --tls-key go together"):
        server_tls(tmp_path / "cert.pem", None)
    (tmp_path / "notpem.txt").write_text("hello")
    with pytest.raises(TlsError, match="holds no PEM certificate"):
        server_tls(tmp_path / "notpem.txt", tmp_path / "notpem.txt").credentials()
    with pytest.raises(TlsError, match="cannot read the TLS CA certificate"):
        channel_credentials(tls=True, ca=tmp_path / "missing.pem")
