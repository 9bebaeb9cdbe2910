"""The checks of a provided certificate and key (tls.mode provided), before anything uses them."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes


def check_provided_certificate(
    certificate_pem: str, key_pem: str, domain: str | None, now: datetime | None = None
) -> list[str]:
    """What is wrong with a provided certificate and key (nothing secret in the messages)."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        return ["is not a PEM certificate"]
    try:
        private_key: PrivateKeyTypes = serialization.load_pem_private_key(
            key_pem.encode(), password=None
        )
    except (ValueError, TypeError):
        return ["tlsPrivateKey is not an unencrypted PEM private key"]
    found: list[str] = []
    if _public_key_der(private_key.public_key()) != _public_key_der(certificate.public_key()):
        found.append("does not match tlsPrivateKey")
    moment = now or datetime.now(UTC)
    if certificate.not_valid_after_utc <= moment:
        found.append(f"expired on {certificate.not_valid_after_utc:%Y-%m-%d}")
    if domain is not None and not _certificate_names(certificate, domain):
        found.append(f"does not name {domain} in its subject alternative names")
    return found


def _public_key_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _certificate_names(certificate: x509.Certificate, domain: str) -> bool:
    """Whether the certificate's subject alternative names cover `domain` (one wildcard label)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    for dns_name in names.value.get_values_for_type(x509.DNSName):
        name = dns_name.lower()
        if name == domain or (
            name.startswith("*.") and domain.split(".", 1)[-1] == name[2:] and "." in domain
        ):
            return True
    return False
