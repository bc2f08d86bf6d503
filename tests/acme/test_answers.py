"""The challenge answers a process serves: the RFC 8737 challenge certificate, and installing
answers (contexts kept for answers that did not change)."""

from __future__ import annotations

import hashlib

from cryptography import x509

from lbcdn.acme import answers


def test_challenge_certificate_carries_the_acme_identifier() -> None:
    cert_pem, key_pem = answers.challenge_cert("www.example.test", "tok.thumb")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"))
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.test"]
    assert "PRIVATE KEY" in key_pem


def test_install_replaces_every_answer_and_keeps_unchanged_contexts() -> None:
    pems = answers.challenge_cert("a.test", "x.y")
    answers.install({"t1": "t1.k"}, {"a.test": pems})
    ctx = answers.ALPN["a.test"]
    answers.install({"t2": "t2.k"}, {"a.test": pems, "b.test": answers.challenge_cert(
        "b.test", "z.y")})
    assert answers.HTTP01 == {"t2": "t2.k"}
    assert answers.ALPN["a.test"] is ctx and set(answers.ALPN) == {"a.test", "b.test"}
    answers.install({}, {})
    assert answers.HTTP01 == {} and answers.ALPN == {}
