"""A test CA and one server certificate it issued, made with `cryptography`, valid for a day."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "PkiPaths", "loopback_pki", "make_pki"]

_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vllm-gcp test CA")])


class PkiPaths(NamedTuple):
    ca: Path
    certificate: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """PEM texts: the CA certificate, the server certificate and the server's private key."""

    ca_pem: str
    certificate_pem: str
    key_pem: str

    def write(self, directory: Path) -> PkiPaths:
        """ca.pem, server.crt and server.key (mode 0600) in `directory`."""
        paths = PkiPaths(directory / "ca.pem", directory / "server.crt", directory / "server.key")
        paths.ca.write_text(self.ca_pem)
        paths.certificate.write_text(self.certificate_pem)
        paths.key.write_text(self.key_pem)
        paths.key.chmod(0o600)
        return paths


def make_pki(
    common_name: str, ip_addresses: Sequence[str] = (), dns_names: Sequence[str] = ()
) -> Pki:
    """A fresh CA and a server certificate for `common_name` with the given alternative names."""
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(_CA_NAME)
        .issuer_name(_CA_NAME)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    alternative_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(_CA_NAME)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Pki(
        ca_pem=ca_certificate.public_bytes(serialization.Encoding.PEM).decode(),
        certificate_pem=server_certificate.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def loopback_pki() -> Pki:
    """A server certificate for localhost and 127.0.0.1, for the stand-ins on loopback."""
    return make_pki("localhost", ip_addresses=("127.0.0.1",), dns_names=("localhost",))
