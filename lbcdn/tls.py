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
- A refused handshake gets its alert. asyncio's and uvloop's TLS transports close the
  connection at once when a handshake fails, dropping the alert OpenSSL wrote (CPython
  gh-98078): clients would see an EOF instead of `protocol_version` or `handshake_failure`. So
  the listener reads the ClientHello first (lbcdn.edge.tls_gate) and `hello_verdict` decides,
  as OpenSSL would, whether the listener's versions and cipher suites refuse it; a refusal is
  answered with the alert, anything else (including what is not a well-formed ClientHello) goes
  on to OpenSSL unchanged.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509

from lbcdn import tlstickets
from lbcdn.acme.config import AcmeConfig, OnDemandConfig
from lbcdn.configkit.fields import REQUIRED, doc

@dataclass(frozen=True)
class CertificateConfig:
    cert_file: str = doc(
        "PEM certificate chain, leaf first (relative paths: from the working directory).",
        REQUIRED)
    key_file: str = doc("PEM private key of the certificate.", REQUIRED)
    server_names: tuple[str, ...] = doc(
        "SNI names this certificate answers for; `*.example.com` matches one label. "
        "Empty: the DNS names of the certificate's subjectAltName.", default_factory=tuple)


@dataclass(frozen=True)
class ListenerTlsConfig:
    """An HTTPS listener: TLS 1.2 and 1.3 only, ECDHE with AES-GCM or ChaCha20 for TLS 1.2,
    session tickets for resumption. Re-read on every reload."""
    certificates: tuple[CertificateConfig, ...] = doc(
        "Chosen by SNI; the first one is the default (no SNI, or no name matches). At "
        "least one, unless `acme` gives some; for their names they win over ACME's.",
        default_factory=tuple)
    min_version: Literal["1.2", "1.3"] = doc("Oldest TLS version accepted.", "1.2")
    acme: tuple[AcmeConfig, ...] = doc(
        "Certificates obtained and renewed from an ACME CA (see "
        "[TLS](../guides/tls.md#automatic-certificates-acme)), chosen by SNI after those "
        "of `certificates`. Needs `admin.state_dir`.", default_factory=tuple)
    on_demand: OnDemandConfig | None = doc(
        "Get a certificate at the first handshake for an allowed name that has none (see "
        "[TLS](../guides/tls.md#on-demand-certificates)). Needs `admin.state_dir`.", None)


@dataclass(frozen=True)
class UpstreamTlsConfig:
    """HTTPS to the pool's targets, with SNI and certificate verification."""
    verify: bool = doc(
        "Verify the target's certificate chain and name; `false` accepts any certificate.", True)
    ca_file: str | None = doc(
        "PEM CA bundle to verify against. Unset: the system's CA bundle.", None)
    server_name: str | None = doc(
        "Sent as SNI and verified against the certificate. Unset: `host_header` when it "
        "is a literal, else the target's host.", None)


CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"

TLS12: Final = 0x0303
TLS13: Final = 0x0304
ALERT_HANDSHAKE_FAILURE: Final = 40
ALERT_PROTOCOL_VERSION: Final = 70
NEED_MORE: Final = -1     # hello_verdict: the ClientHello is not all there yet
PASS: Final = 0           # hello_verdict: let OpenSSL handle it
MAX_HELLO_BYTES: Final = 64 * 1024  # a longer ClientHello is left to OpenSSL
_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_SUPPORTED_VERSIONS: Final = 43


class HelloPolicy:
    """What a server context accepts, in wire codes: protocol versions, and per version the
    cipher suites."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.versions = frozenset(
            {TLS13} if context.minimum_version is ssl.TLSVersion.TLSv1_3 else {TLS12, TLS13})
        suites: dict[int, set[int]] = {TLS12: set(), TLS13: set()}
        for cipher in context.get_ciphers():
            suites[TLS13 if cipher["protocol"] == "TLSv1.3" else TLS12].add(
                int(cipher["id"]) & 0xFFFF)
        self.suites = {v: frozenset(s) for v, s in suites.items()}


def _grease(code: int) -> bool:
    """RFC 8701 values (0x0A0A, 0x1A1A...): offered to keep servers honest, never chosen."""
    return code & 0x0F0F == 0x0A0A and code >> 8 == code & 0xFF


def _hello_message(data: bytes) -> tuple[bytes, int] | int:
    """The ClientHello body from the handshake records at the start of `data`, with the record
    version; NEED_MORE, or PASS for anything else."""
    message = bytearray()
    record_version = 0
    at = 0
    while True:
        if len(data) < at + 5:
            return NEED_MORE
        if data[at] != _HANDSHAKE or data[at + 1] != 3:
            return PASS
        record_version = record_version or int.from_bytes(data[at + 1:at + 3], "big")
        length = int.from_bytes(data[at + 3:at + 5], "big")
        if len(data) < at + 5 + length:
            return NEED_MORE
        message += data[at + 5:at + 5 + length]
        at += 5 + length
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                return PASS
            size = int.from_bytes(message[1:4], "big")
            if len(message) >= 4 + size:
                return bytes(message[4:4 + size]), record_version


def hello_verdict(data: bytes, policy: HelloPolicy) -> tuple[int, int]:
    """(verdict, record version) for the first bytes a client sent: NEED_MORE, PASS, or the
    alert OpenSSL would refuse the ClientHello with (ALERT_PROTOCOL_VERSION when no version the
    client offers is one we accept, ALERT_HANDSHAKE_FAILURE when no cipher suite it offers for
    the version chosen is). Pure; anything malformed is PASS."""
    found = _hello_message(data)
    if isinstance(found, int):
        return (NEED_MORE if found == NEED_MORE and len(data) < MAX_HELLO_BYTES else PASS), 0
    body, record_version = found
    try:
        legacy = int.from_bytes(body[0:2], "big")
        at = 34
        at += 1 + body[at]                                  # session id
        n = int.from_bytes(body[at:at + 2], "big")
        suites_at = at + 2
        at += 2 + n
        at += 1 + body[at]                                  # compression methods
        offered: set[int] | None = None
        if at + 2 <= len(body):
            end = at + 2 + int.from_bytes(body[at:at + 2], "big")
            at += 2
            while at + 4 <= end:
                kind = int.from_bytes(body[at:at + 2], "big")
                size = int.from_bytes(body[at + 2:at + 4], "big")
                if kind == _SUPPORTED_VERSIONS:
                    listed = body[at + 5:at + 5 + body[at + 4]]
                    offered = {int.from_bytes(listed[i:i + 2], "big")
                               for i in range(0, len(listed) - 1, 2)}
                at += 4 + size
    except IndexError:
        return PASS, 0
    if len(body) < 35 or at > len(body):
        return PASS, 0
    if offered is None:  # no supported_versions: the legacy field is the highest it speaks
        offered = {TLS12} if legacy >= TLS12 else {legacy}
    mutual = {v for v in offered if not _grease(v)} & policy.versions
    if not mutual:
        return ALERT_PROTOCOL_VERSION, record_version
    accepted = policy.suites[max(mutual)]
    # per handshake: stop at the first suite accepted (usually the first offered)
    for i in range(suites_at, suites_at + n, 2):
        if int.from_bytes(body[i:i + 2], "big") in accepted:
            return PASS, record_version
    return ALERT_HANDSHAKE_FAILURE, record_version


_SERVER_NAME: Final = 0
_ALPN: Final = 16


def hello_sni_alpn(data: bytes) -> tuple[str | None, list[bytes]]:
    """The server name and the ALPN protocols a whole ClientHello at the start of `data`
    offers ((None, []) for anything else). Pure; anything malformed gives what was read."""
    found = _hello_message(data)
    if isinstance(found, int):
        return None, []
    body = found[0]
    sni: str | None = None
    protocols: list[bytes] = []
    try:
        at = 34
        at += 1 + body[at]
        at += 2 + int.from_bytes(body[at:at + 2], "big")
        at += 1 + body[at]
        end = at + 2 + int.from_bytes(body[at:at + 2], "big")
        at += 2
        while at + 4 <= min(end, len(body)):
            kind = int.from_bytes(body[at:at + 2], "big")
            size = int.from_bytes(body[at + 2:at + 4], "big")
            ext = body[at + 4:at + 4 + size]
            if kind == _SERVER_NAME and len(ext) >= 5 and ext[2] == 0:
                n = int.from_bytes(ext[3:5], "big")
                sni = ext[5:5 + n].decode("ascii", "replace").lower().rstrip(".")
            elif kind == _ALPN and len(ext) >= 2:
                i = 2
                while i < len(ext):
                    protocols.append(bytes(ext[i + 1:i + 1 + ext[i]]))
                    i += 1 + ext[i]
            at += 4 + size
    except IndexError:
        pass
    return sni, protocols


def alert_record(description: int, record_version: int) -> bytes:
    """A fatal alert in one TLS record, in the record version the client used."""
    return bytes((21, record_version >> 8, record_version & 0xFF, 0, 2, 2, description))


def _server_context(min_version: str, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(CIPHERS_TLS12)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(list(alpn))
    tlstickets.install(ctx)  # the daemon's shared ticket keys, so any worker resumes
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

    def __init__(self, config: ListenerTlsConfig,
                 acme: Sequence[CertificateConfig] = (),
                 alpn: Sequence[str] = ("http/1.1",)) -> None:
        self.alpn = alpn   # the protocols offered (the listener's `http_versions`)
        self.context = _server_context(config.min_version, alpn)
        self.policy = HelloPolicy(self.context)
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}
        self.config = config
        # certificates from ACME (lbcdn.acme.manager), after the files' for every name
        self.acme: tuple[CertificateConfig, ...] = tuple(acme)
        self.has_default = False   # ACME only, none issued yet: handshakes without SNI fail
        self.load(config)

    def load(self, config: ListenerTlsConfig) -> None:
        """(Re)load certificates; raises OSError/ssl.SSLError when one cannot be used."""
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        every = config.certificates + self.acme
        for cert in every:
            ctx = _server_context(config.min_version, self.alpn)
            ctx.load_cert_chain(cert.cert_file, cert.key_file)
            for name in self._names(cert):
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], ctx)
                else:
                    exact.setdefault(name, ctx)
        self.context.set_alpn_protocols(list(self.alpn))
        if every:
            self.context.load_cert_chain(every[0].cert_file, every[0].key_file)
            self.has_default = True
        # One certificate (or none yet): the base context already serves it for every name,
        # so handshakes skip the call into Python and the context switch that would pick it.
        self.context.sni_callback = self._select if len(every) > 1 else None
        self._exact, self._wildcard = exact, wildcard
        self.config = config

    def set_acme(self, certificates: Sequence[CertificateConfig]) -> None:
        """Swap the ACME certificates in: new handshakes use them, open connections keep
        theirs. Raises OSError/ssl.SSLError (and changes nothing) when one cannot be used."""
        old = self.acme
        self.acme = tuple(certificates)
        try:
            self.load(self.config)
        except (OSError, ssl.SSLError):
            self.acme = old
            raise

    @staticmethod
    def _names(cert: CertificateConfig) -> Sequence[str]:
        return [n.lower() for n in cert.server_names] or certificate_names(cert.cert_file)

    def has_name(self, name: str) -> bool:
        """A certificate (not the default) answers for `name` (lower case, no final dot)."""
        return name in self._exact or name.partition(".")[2] in self._wildcard

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
