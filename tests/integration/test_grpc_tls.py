"""PrismClient speaks TLS to a gRPC endpoint (`grpcs://`, with the server's CA), against a real grpc server holding a
self-signed certificate made here; it refuses a server it cannot verify, and never falls back to plaintext."""
from __future__ import annotations

import datetime
import ipaddress
from concurrent import futures

import grpc
import pytest

from cluster.client import PrismClient, PrismClientError
from cluster.services import free_port


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (tmp_path / "ca.pem").write_bytes(pem)
    return pem, key_pem, tmp_path / "ca.pem"


class Names:
    def list_collections(self):
        return ["over_tls"]


def collections_servicer():
    """prism.v1.Collections/List through router.serving.grpc_api.handle, as the Serve ingress runs it."""
    import asyncio

    from router.serving import grpc_api
    from cluster.proto.prism.v1 import prism_pb2_grpc as pbg

    class Collections(pbg.CollectionsServicer):
        def List(self, request, context):  # noqa: N802 - the gRPC method name
            return asyncio.run(grpc_api.handle("List", request, context, service=Names(), guard=None))

    return Collections()


@pytest.fixture
def tls_server(tmp_path):
    from grpc_health.v1 import health, health_pb2_grpc

    from cluster.proto.prism.v1 import prism_pb2_grpc as pbg

    cert, key, ca_file = self_signed(tmp_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    pbg.add_CollectionsServicer_to_server(collections_servicer(), server)
    port = free_port()
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    yield port, ca_file
    server.stop(None)


def test_the_client_speaks_tls_with_the_servers_ca(tls_server):
    port, ca_file = tls_server
    with PrismClient(f"grpcs://127.0.0.1:{port}", tls_ca=str(ca_file), timeout=10) as c:
        assert c.health() == {"status": "SERVING"}
        assert c.list_collections() == ["over_tls"]
    with PrismClient(f"grpcs://localhost:{port}", tls_ca=ca_file.read_bytes(), timeout=10) as c:
        assert c.list_collections() == ["over_tls"]


def test_the_client_refuses_a_server_it_cannot_verify_and_plaintext(tls_server):
    port, _ = tls_server
    with PrismClient(f"grpcs://127.0.0.1:{port}", timeout=5) as c:  # the system's CAs never signed it
        with pytest.raises(PrismClientError) as e:
            c.list_collections()
        assert e.value.status == "UNAVAILABLE"
    with PrismClient(f"grpc://127.0.0.1:{port}", timeout=5) as c:  # plaintext to a TLS port
        with pytest.raises(PrismClientError):
            c.list_collections()
