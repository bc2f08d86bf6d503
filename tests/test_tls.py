"""hello_verdict: the ClientHellos a listener refuses, and the alert each gets, decided from
real ClientHellos that Python's ssl module writes (no sockets); ServerTls's SNI selection on
real handshakes over memory BIOs."""

from __future__ import annotations

import ssl
import warnings
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from lbcdn.tls import ALERT_HANDSHAKE_FAILURE, ALERT_PROTOCOL_VERSION, NEED_MORE, PASS, \
    CertificateConfig, HelloPolicy, ListenerTlsConfig, ServerTls, _server_context, \
    alert_record, hello_sni_alpn, hello_verdict

POLICY_12 = HelloPolicy(_server_context("1.2"))
POLICY_13 = HelloPolicy(_server_context("1.3"))


def client_hello(low: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
                 high: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
                 ciphers: str | None = None, alpn: list[str] | None = None,
                 server_name: str | None = "a.test") -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if low < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        ctx.minimum_version, ctx.maximum_version = low, high
        if alpn is not None:
            ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_modern_clients_pass() -> None:
    assert hello_verdict(client_hello(), POLICY_12)[0] == PASS
    assert hello_verdict(client_hello(), POLICY_13)[0] == PASS
    assert hello_verdict(client_hello(high=ssl.TLSVersion.TLSv1_2), POLICY_12)[0] == PASS


def test_old_versions_get_protocol_version() -> None:
    old = client_hello(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    verdict, record_version = hello_verdict(old, POLICY_12)
    assert verdict == ALERT_PROTOCOL_VERSION
    assert record_version == int.from_bytes(old[1:3], "big")
    tls12 = client_hello(high=ssl.TLSVersion.TLSv1_2)
    assert hello_verdict(tls12, POLICY_13)[0] == ALERT_PROTOCOL_VERSION


def test_no_shared_cipher_gets_handshake_failure() -> None:
    rsa_kx = client_hello(high=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA256:AES256-SHA")
    assert hello_verdict(rsa_kx, POLICY_12)[0] == ALERT_HANDSHAKE_FAILURE
    # a 1.3 client is judged by its 1.3 suites, whatever 1.2 suites it offers
    assert hello_verdict(client_hello(ciphers="AES128-SHA256"), POLICY_12)[0] == PASS


def test_partial_hellos_wait_and_garbage_passes() -> None:
    hello = client_hello()
    for cut in (1, 5, 9, len(hello) - 1):
        assert hello_verdict(hello[:cut], POLICY_12)[0] == NEED_MORE
    assert hello_verdict(b"GET / HTTP/1.1\r\n\r\n", POLICY_12)[0] == PASS
    assert hello_verdict(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", POLICY_12)[0] == PASS
    # a ClientHello whose fields overrun it is left to OpenSSL
    assert hello_verdict(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\xff\xff",
                         POLICY_12)[0] == PASS


def test_a_hello_split_over_two_records() -> None:
    old = client_hello(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    message = old[5:]
    half = len(message) // 2
    split = b"".join(b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
                     for part in (message[:half], message[half:]))
    assert hello_verdict(split[:len(split) - 3], POLICY_12)[0] == NEED_MORE
    assert hello_verdict(split, POLICY_12)[0] == ALERT_PROTOCOL_VERSION


def test_alert_record() -> None:
    assert alert_record(ALERT_PROTOCOL_VERSION, 0x0301) == b"\x15\x03\x01\x00\x02\x02\x46"


def test_server_name_and_alpn_of_a_hello() -> None:
    """What the TLS-ALPN-01 answer (lbcdn.edge.tls_gate) reads of a ClientHello."""
    assert hello_sni_alpn(client_hello(alpn=["acme-tls/1"], server_name="WWW.Example.test")) \
        == ("www.example.test", [b"acme-tls/1"])
    assert hello_sni_alpn(client_hello(alpn=["h2", "http/1.1"])) == ("a.test", [b"h2",
                                                                               b"http/1.1"])
    assert hello_sni_alpn(client_hello(server_name=None)) == (None, [])
    hello = client_hello(alpn=["acme-tls/1"])
    assert hello_sni_alpn(hello[:40]) == (None, [])           # not whole yet
    assert hello_sni_alpn(b"GET / HTTP/1.1\r\n\r\n") == (None, [])
    assert hello_sni_alpn(hello[:-3]) == (None, [])


def _served_name(context: ssl.SSLContext, server_name: str) -> str:
    """The first DNS name of the certificate a handshake for `server_name` gets (memory BIOs)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=server_name)
    s = context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (c, s):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    der = c.getpeercert(binary_form=True)
    assert der is not None
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName)
    return str(san.value.get_values_for_type(x509.DNSName)[0])


def test_sni_callback_only_when_it_can_choose(tmp_path: Path) -> None:
    """One certificate serves every name from the base context, with no call into Python per
    handshake; a reload to two puts the SNI selection back, and away again."""
    ca = trustme.CA()
    files = []
    for name in ("a.test", "b.test"):
        cert = ca.issue_cert(name)
        cert.cert_chain_pems[0].write_to_path(tmp_path / f"{name}.pem")
        cert.private_key_pem.write_to_path(tmp_path / f"{name}.key")
        files.append(CertificateConfig(str(tmp_path / f"{name}.pem"),
                                       str(tmp_path / f"{name}.key")))
    one = ListenerTlsConfig(certificates=(files[0],))
    tls = ServerTls(one)
    assert tls.context.sni_callback is None
    assert _served_name(tls.context, "b.test") == "a.test"
    tls.load(ListenerTlsConfig(certificates=tuple(files)))
    assert tls.context.sni_callback is not None
    assert _served_name(tls.context, "b.test") == "b.test"
    assert _served_name(tls.context, "a.test") == "a.test"
    tls.load(one)
    assert tls.context.sni_callback is None
    assert _served_name(tls.context, "b.test") == "a.test"
