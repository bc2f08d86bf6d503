"""The ACME challenge answers this process serves, read by the edge on its hot paths.

The manager (in the single process, or the workers' control process) decides them and every
data-plane process installs them with `install` before the CA is told to look:
- HTTP-01: `/.well-known/acme-challenge/TOKEN` on a plain listener answers the key
  authorization (lbcdn.edge.exchange, before routing).
- TLS-ALPN-01 (RFC 8737): a ClientHello offering `acme-tls/1` for a name in ALPN gets a
  context with the self-signed challenge certificate for that name (lbcdn.edge.tls_gate).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile
from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

ACME_TLS_ALPN = "acme-tls/1"
ACME_TLS_ALPN_BYTES = b"acme-tls/1"
HTTP01_PREFIX = b"/.well-known/acme-challenge/"
_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")

# token -> key authorization (HTTP-01)
HTTP01: dict[str, str] = {}
# name -> context with the challenge certificate (TLS-ALPN-01)
ALPN: dict[str, ssl.SSLContext] = {}


def challenge_cert(name: str, key_authorization: str) -> tuple[str, str]:
    """(certificate PEM, key PEM): self-signed for `name`, with the critical acmeIdentifier
    extension holding the SHA-256 of the key authorization (RFC 8737 3)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            # the value is the DER of an OCTET STRING holding the digest
            .add_extension(x509.UnrecognizedExtension(_ACME_IDENTIFIER,
                                                      b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode("ascii"))


def _alpn_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    # load_cert_chain reads files only: a private temporary one, gone at once
    fd, path = tempfile.mkstemp(prefix="lbcdn-acme-alpn-", suffix=".pem")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key_pem + cert_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
    return ctx


def install(http01: Mapping[str, str], alpn: Mapping[str, tuple[str, str]]) -> None:
    """Serve these answers from now on (and no others)."""
    contexts = {name: ALPN[name] if name in ALPN and _same(name, pems) else
                _alpn_context(*pems) for name, pems in alpn.items()}
    _PEMS.clear()
    _PEMS.update(alpn)
    ALPN.clear()
    ALPN.update(contexts)
    HTTP01.clear()
    HTTP01.update(http01)


_PEMS: dict[str, tuple[str, str]] = {}


def _same(name: str, pems: tuple[str, str]) -> bool:
    return _PEMS.get(name) == tuple(pems)
