"""TLS contexts: the listener's (certificates chosen by SNI) and the upstream client's.

Rules:
- TLS 1.2 and 1.3 only. For 1.2, ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (what
  Mozilla's "intermediate" profile allows); 1.3 suites are OpenSSL's defaults, all AEAD.
  Session tickets stay on (OpenSSL's default), so clients resume without a full handshake.
- A listener keeps one base SSLContext for its whole life; certificates live in per-certificate
  contexts that the SNI callback switches to. A reload swaps the selection table and reloads the
  default certificate into the base context, so new handshakes use the new certificates while
  the listening socket and open connections stay as they are.
- SNI names come from the config or, by default, from the certificate's subjectAltName DNS
  names. `*.example.com` matches exactly one label, as in certificate matching (RFC 6125).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from cryptography import x509

from lbcdn.config.schema import CertificateConfig, ListenerTlsConfig, UpstreamTlsConfig

CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _server_context(min_version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(CIPHERS_TLS12)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def certificate_names(cert_file: str) -> list[str]:
    """The DNS names of a PEM certificate's subjectAltName (or its CN when it has none)."""
    with open(cert_file, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [str(a.value).lower() for a in
                cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


class ServerTls:
    """The SSLContext a listener serves with, and its SNI selection."""

    def __init__(self, config: ListenerTlsConfig) -> None:
        self.context = _server_context(config.min_version)
        self.context.sni_callback = self._select
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}
        self.load(config)

    def load(self, config: ListenerTlsConfig) -> None:
        """(Re)load certificates; raises OSError/ssl.SSLError when one cannot be used."""
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for cert in config.certificates:
            ctx = _server_context(config.min_version)
            ctx.load_cert_chain(cert.cert_file, cert.key_file)
            for name in self._names(cert):
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], ctx)
                else:
                    exact.setdefault(name, ctx)
        default = config.certificates[0]
        self.context.load_cert_chain(default.cert_file, default.key_file)
        self._exact, self._wildcard = exact, wildcard

    @staticmethod
    def _names(cert: CertificateConfig) -> Sequence[str]:
        return [n.lower() for n in cert.server_names] or certificate_names(cert.cert_file)

    def _select(self, sock: ssl.SSLObject, server_name: str | None,
                base: ssl.SSLContext) -> None:
        if not server_name:
            return  # the base context's (default) certificate
        name = server_name.lower().rstrip(".")
        ctx = self._exact.get(name)
        if ctx is None:
            _, _, parent = name.partition(".")
            ctx = self._wildcard.get(parent)
        if ctx is not None:
            sock.context = ctx


def client_context(config: UpstreamTlsConfig) -> ssl.SSLContext:
    """The SSLContext for connections to a pool's targets."""
    ctx = ssl.create_default_context(cafile=config.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not config.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
