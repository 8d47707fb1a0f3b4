"""Helpers for the OPC UA tests: self-signed certificates, free ports, and asyncua clients on loopback."""
from __future__ import annotations

import datetime
import socket
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device.station.opcua_nodes import NAMESPACE


def self_signed(folder: Path, name: str, uri: str) -> tuple[Path, Path]:
    """A self-signed RSA-2048 certificate (DER) and key (PEM) whose URI is ``uri``, as OPC UA wants."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                         data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(port: int, user: str | None = None, password: str | None = None, timeout: float = 10.0) -> Client:
    """An asyncua client for the station server on loopback (anonymous without ``user``)."""
    c = Client(f"opc.tcp://127.0.0.1:{port}/", timeout=timeout)
    if user is not None:
        c.set_user(user)
        c.set_password(password or "")
    return c


async def secure(c: Client, cert: Path, key: Path, server_cert: Path, uri: str, encrypt: bool = True) -> Client:
    """Set Basic256Sha256 (sign-and-encrypt or sign) with this client certificate on ``c``."""
    c.application_uri = uri
    mode = ua.MessageSecurityMode.SignAndEncrypt if encrypt else ua.MessageSecurityMode.Sign
    await c.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key), server_certificate=str(server_cert),
                         mode=mode)
    return c


class Station:
    """The station's nodes as one client session sees them."""

    def __init__(self, c: Client, idx: int) -> None:
        self.c, self.idx = c, idx
        self.node = c.get_node(ua.NodeId("Station", idx))

    @classmethod
    async def of(cls, c: Client) -> "Station":
        return cls(c, await c.get_namespace_index(NAMESPACE))

    def var(self, path: str) -> Any:
        return self.c.get_node(ua.NodeId(f"Station.{path}", self.idx))

    async def read(self, path: str) -> Any:
        return await self.var(path).read_value()

    async def call(self, method: str, *args: Any) -> Any:
        return await self.node.call_method(ua.NodeId(f"Station.{method}", self.idx), *args)
