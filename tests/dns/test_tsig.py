"""TSIG (RFC 8945) checks and signatures, against dnspython's implementation: what dnspython
signs verifies here, what is signed here verifies in dnspython, and each failure gets the
RFC's error. (Over real sockets and with Knot: tests/e2e/test_dns_protocol.py and
tests/e2e/test_dns_knot_tsig.py.)"""

from __future__ import annotations

import base64
import hmac
import time
from pathlib import Path

import dns.message
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import pytest

from lbcdn.dns.config import TsigKeyConfig
from lbcdn.dns.tsig import (BADKEY, BADSIG, BADTIME, BADTRUNC, NOERROR, Key, KeyProblem,
                            build_keys, error_reply, sign, sign_replies, verify)
from lbcdn.dns.wire import FORMERR, parse_query

SECRET = bytes(range(32))
NOW = float(int(time.time()))  # dnspython checks replies against its clock
KEY = Key((b"xfr-key",), "hmac-sha256", SECRET)
KEYS = {KEY.name: KEY}


def keyring(name: str = "xfr-key.", secret: bytes = SECRET, alg: str = "hmac-sha256"
            ) -> dict[dns.name.Name, dns.tsig.Key]:
    return dns.tsigkeyring.from_text({name: (alg, base64.b64encode(secret).decode())})


def signed_query(name: str = "xfr-key.", secret: bytes = SECRET, alg: str = "hmac-sha256",
                 at: float = NOW) -> tuple[dns.message.Message, bytes]:
    q = dns.message.make_query("example.com.", "SOA", use_edns=0)
    q.use_tsig(keyring(name, secret, alg), name, algorithm=alg)
    real = time.time
    try:  # dnspython signs at the time its clock says: make it `at`
        time.time = lambda: at
        return q, q.to_wire()
    finally:
        time.time = real


def check(wire: bytes, now: float = NOW) -> tuple[int, bytes | None]:
    q = parse_query(wire)
    assert q is not None and q.tsig
    v = verify(wire, q.tsig, KEYS, now)
    return v.error, error_reply(v, now) if v.error else None


def test_a_request_dnspython_signed_verifies_and_the_reply_verifies_in_dnspython() -> None:
    q, wire = signed_query()
    parsed = parse_query(wire)
    assert parsed is not None
    v = verify(wire, parsed.tsig, KEYS, NOW + 10)
    assert (v.error, v.key) == (NOERROR, KEY)
    stripped = parse_query(v.message)
    assert stripped is not None and not stripped.tsig and stripped.edns is not None
    reply = dns.message.make_response(dns.message.from_wire(v.message))
    out = sign_replies([reply.to_wire()], v, NOW + 10)[0]
    r = dns.message.from_wire(out, keyring=keyring(), request_mac=q.mac)
    assert r.had_tsig


def test_sha512_and_sha1_keys() -> None:
    for alg in ("hmac-sha512", "hmac-sha1"):
        key = Key((b"k",), alg, SECRET)
        q, wire = signed_query("k.", alg=alg)
        parsed = parse_query(wire)
        assert parsed is not None
        assert verify(wire, parsed.tsig, {key.name: key}, NOW).error == NOERROR


def test_unknown_key_or_algorithm_gets_an_unsigned_badkey() -> None:
    for name, alg in (("other.", "hmac-sha256"), ("xfr-key.", "hmac-sha512")):
        q, wire = signed_query(name, alg=alg)
        error, reply = check(wire)
        assert error == BADKEY and reply is not None
        with pytest.raises(dns.tsig.PeerBadKey):
            dns.message.from_wire(reply, keyring=keyring(name, alg=alg), request_mac=q.mac)
        r = dns.message.from_wire(reply, keyring=False)  # unsigned: MAC size 0
        assert r.rcode() == dns.rcode.NOTAUTH and r.edns == 0 and r.question
        assert r.tsig is not None and r.tsig[0].mac == b"" and r.tsig[0].error == BADKEY


def test_wrong_secret_gets_an_unsigned_badsig() -> None:
    q, wire = signed_query(secret=b"w" * 32)
    error, reply = check(wire)
    assert error == BADSIG and reply is not None
    with pytest.raises(dns.tsig.PeerBadSignature):
        dns.message.from_wire(reply, keyring=keyring(), request_mac=q.mac)


def test_old_signature_gets_a_signed_badtime_with_our_time() -> None:
    q, wire = signed_query(at=NOW - 301)
    error, reply = check(wire)
    assert error == BADTIME and reply is not None
    with pytest.raises(dns.tsig.PeerBadTime):
        dns.message.from_wire(reply, keyring=keyring(), request_mac=q.mac)
    r = dns.message.from_wire(reply, keyring=False)
    assert r.tsig is not None
    tsig = r.tsig[0]
    assert tsig.time_signed == int(NOW - 301)
    assert tsig.other == int(NOW).to_bytes(6, "big")
    # dnspython stops at the error code: check the MAC (RFC 8945 4.3.3) here, by hand
    arcount = int.from_bytes(reply[10:12], "big") - 1   # without the TSIG
    unsigned = (reply[:10] + arcount.to_bytes(2, "big")
                + reply[12:reply.rindex(b"\x07xfr-key\x00\x00\xfa")])
    variables = (b"\x07xfr-key\x00" + b"\x00\xff" + b"\0\0\0\0" + b"\x0bhmac-sha256\x00"
                 + tsig.time_signed.to_bytes(6, "big") + (300).to_bytes(2, "big")
                 + BADTIME.to_bytes(2, "big") + (6).to_bytes(2, "big") + tsig.other)
    assert q.mac is not None
    expected = hmac.new(SECRET, len(q.mac).to_bytes(2, "big") + q.mac + unsigned + variables,
                        "sha256").digest()
    assert tsig.mac == expected
    assert check(signed_query(at=NOW - 300)[1])[0] == NOERROR  # inside the fudge


def test_truncated_macs() -> None:
    _, wire = signed_query()
    parsed = parse_query(wire)
    assert parsed is not None
    mac_at = len(wire) - 6 - 32   # the 32-byte MAC sits before original id, error, other len
    size_at = mac_at - 2

    def truncate(n: int) -> bytes:
        rdlen_at = parsed.tsig + len(b"\x07xfr-key\x00") + 8
        rdlen = int.from_bytes(wire[rdlen_at:rdlen_at + 2], "big") - (32 - n)
        out = bytearray(wire[:mac_at - 2] + n.to_bytes(2, "big") + wire[mac_at:mac_at + n]
                        + wire[mac_at + 32:])
        out[rdlen_at:rdlen_at + 2] = rdlen.to_bytes(2, "big")
        assert int.from_bytes(wire[size_at:size_at + 2], "big") == 32
        return bytes(out)

    assert check(truncate(16))[0] == BADTRUNC   # valid, but only full MACs are accepted
    error, reply = check(truncate(8))           # under half the digest: FORMERR, no TSIG
    assert error == FORMERR and reply is not None
    r = dns.message.from_wire(reply, keyring=False)
    assert r.rcode() == dns.rcode.FORMERR and r.tsig is None


def test_a_signed_request_reads_back_in_dnspython() -> None:
    """Outgoing NOTIFYs are signed as requests."""
    wire, mac = sign(dns.message.make_query("example.com.", "SOA").to_wire(), KEY, NOW)
    parsed = parse_query(wire)
    assert parsed is not None
    assert verify(wire, parsed.tsig, KEYS, NOW).error == NOERROR
    msg = dns.message.from_wire(wire, keyring=keyring())
    assert msg.had_tsig and msg.mac == mac


def test_build_keys_reads_secret_files_and_names_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "k.key").write_text(base64.b64encode(SECRET).decode() + "\n")
    keys = build_keys([TsigKeyConfig(name="XFR-Key", secret_file="k.key")], str(tmp_path))
    assert keys == {(b"xfr-key",): KEY}
    with pytest.raises(KeyProblem) as info:
        build_keys([TsigKeyConfig(name="a", secret="c2VjcmV0"),
                    TsigKeyConfig(name="b", secret_file="missing.key")], str(tmp_path))
    assert info.value.problems == [
        ("dns.tsig_keys[1].secret_file", "cannot read missing.key: No such file or directory")]


def test_refusals_from_spoofable_senders_are_logged_sparsely(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from lbcdn.dns.tsig import SparseLog
    sparse = SparseLog(logging.getLogger("test.tsig"))
    with caplog.at_level(logging.WARNING, "test.tsig"):
        for i in range(9):
            sparse.warning("refused %d", i)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0 (1 so far)", "refused 1 (2 so far)", "refused 3 (4 so far)",
        "refused 7 (8 so far)"]
