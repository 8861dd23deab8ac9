"""The platform's certificate authority: who is who on the internal gRPC plane.

Every gRPC connection inside Capstan is mutual TLS. The CA is created at first
start; each component holds a certificate whose common name *is* its identity:

- ``svc:<name>``  a platform service (scheduler, trainer, registry, inference, gateway);
- ``admin``       the operator (the ``capstan`` command, tests);
- ``node:<id>``   a node agent, issued by the scheduler when the agent presents a
                  join token (the agent makes its key pair and sends only a CSR).

Service certificates also name ``<service>.capstan.internal`` so a client checks
it reached the service it meant (a node certificate can never pass as one).
Keys are EC P-256: fast to make, small, supported by gRPC's TLS stack.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

INTERNAL_DOMAIN = "capstan.internal"
CA_YEARS = 10
LEAF_DAYS = 825  # long-lived like kubeadm's; rotating them is an operator action for now


def server_name(service: str) -> str:
    """The DNS name a service's certificate carries and its clients check."""
    return f"{service}.{INTERNAL_DOMAIN}"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(name: str = "Capstan platform CA") -> KeyPair:
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def _sign(
    ca: KeyPair, public_key: ec.EllipticCurvePublicKey, common_name: str, dns_names: list[str], days: int
) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the platform CA key must be an EC key")
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    # gRPC's TLS stack wants a SAN on every certificate; a client-only one names its identity.
    sans = dns_names or [f"{common_name.replace(':', '-')}.client.{INTERNAL_DOMAIN}"]
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue(ca: KeyPair, common_name: str, dns_names: list[str] | None = None, days: int = LEAF_DAYS) -> KeyPair:
    """A new key and a certificate for it, signed by ``ca`` (services, the operator)."""
    key = new_key()
    return KeyPair(_sign(ca, key.public_key(), common_name, list(dns_names or []), days), key_pem(key))


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_csr(ca: KeyPair, csr_pem: bytes, common_name: str, days: int = LEAF_DAYS) -> bytes:
    """Sign a node's CSR. The common name is the signer's decision, never the requester's: whatever
    name the CSR asks for is ignored. Raises ``ValueError`` for a malformed or forged CSR."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise ValueError("the certificate signing request is not valid PEM") from e
    if not csr.is_signature_valid:
        raise ValueError("the certificate signing request's signature does not match its key")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("node keys must be EC P-256")
    return _sign(ca, public_key, common_name, [], days)


def common_name(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER form, hex (what an operator compares by eye)."""
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()
