"""Names, record data and master-file text forms."""

from __future__ import annotations

import pytest

from lbcdn.dns.masterfile import MasterFileError, parse_master
from lbcdn.dns.names import (BadName, is_subdomain, parse_name, relative_text, reverse_name,
                             to_text, to_wire)
from lbcdn.dns.rdata import (BadRdata, logical_lines, parse_rdata_text, parse_ttl, rdata_wire,
                             tokenize)

ORIGIN = (b"example", b"com")


def test_parse_name_forms() -> None:
    assert parse_name("WWW.Example.COM.") == (b"www", b"example", b"com")
    assert parse_name("www", ORIGIN) == (b"www", b"example", b"com")
    assert parse_name("@", ORIGIN) == ORIGIN
    assert parse_name(".") == ()
    assert parse_name(r"a\.b.c.") == (b"a.b", b"c")
    assert parse_name(r"\065\066.") == (b"ab",)
    assert to_text(parse_name(r"a\.b\032c.")) == r"a\.b\032c."
    assert to_wire(parse_name("ab.c.")) == b"\x02ab\x01c\x00"
    assert relative_text(parse_name("www.example.com."), ORIGIN) == "www"
    assert relative_text(ORIGIN, ORIGIN) == "@"
    assert is_subdomain(parse_name("a.example.com."), ORIGIN)
    assert not is_subdomain(parse_name("aexample.com."), ORIGIN)
    assert reverse_name("192.0.2.1") == parse_name("1.2.0.192.in-addr.arpa.")


@pytest.mark.parametrize("text", ["a..b", "", "x" * 64 + ".", "é.com", "a b", "\\", "\\999."])
def test_bad_names(text: str) -> None:
    with pytest.raises(BadName):
        parse_name(text)


def test_long_names() -> None:
    ok = ".".join(["a" * 63] * 3) + "." + "b" * 61 + "."
    assert len(to_wire(parse_name(ok))) == 255
    with pytest.raises(BadName):
        parse_name("c" + ok)


def test_rdata_values() -> None:
    assert parse_rdata_text(1, "192.0.2.1", ORIGIN).data == (192, 0, 2, 1)
    mx = parse_rdata_text(15, "10 Mail", ORIGIN)
    assert str(mx.toZone()) == "10 mail.example.com."
    txt = parse_rdata_text(16, '"a b" c "\\"q\\"" "\\255"', ORIGIN)
    assert txt.data == [b"a b", b"c", b'"q"', b"\xff"]
    soa = parse_rdata_text(6, "ns hostmaster 1 1h 15m 1w 5m", ORIGIN)
    assert tuple(soa.times) == (1, 3600, 900, 604800, 300)
    assert rdata_wire(parse_rdata_text(5, "A.example.com.", ())) == rdata_wire(
        parse_rdata_text(5, "a.EXAMPLE.com.", ()))
    for rtype, text in [(1, "1.2.3.4.5"), (28, "::g"), (33, "1 2 70000 x"), (257, "256 a b"),
                        (16, '"' + "x" * 256 + '"'), (2, "a b"), (99, "x")]:
        with pytest.raises(BadRdata):
            parse_rdata_text(rtype, text, ORIGIN)


def test_ttls_and_tokens() -> None:
    assert parse_ttl("300") == 300 and parse_ttl("1h30m") == 5400 and parse_ttl("2W") == 1209600
    for bad in ("", "h", "1x", str(2**31)):
        with pytest.raises(BadRdata):
            parse_ttl(bad)
    assert [t.text for t in tokenize('a "b c" ; comment')] == ["a", "b c"]
    lines = list(logical_lines("a (\n b\n c ) d\n  e\n"))
    assert [(ln.indented, [t.text for t in ln.tokens], ln.number) for ln in lines] == [
        (False, ["a", "b", "c", "d"], 1), (True, ["e"], 4)]
    with pytest.raises(BadRdata):
        list(logical_lines('a "open\n'))
    with pytest.raises(BadRdata):
        list(logical_lines("a ( b\n"))


def test_master_ttl_rules() -> None:
    recs = parse_master("a A 192.0.2.1\nb 60 A 192.0.2.2\nc A 192.0.2.3\n$TTL 5\nd A 192.0.2.4\n",
                        ORIGIN, 300)
    assert [r.ttl for r in recs] == [300, 60, 60, 5]
    recs = parse_master("$ORIGIN sub\nx A 192.0.2.1\n$ORIGIN other.net.\n@ A 192.0.2.2\n",
                        ORIGIN, 300)
    assert [r.name for r in recs] == [parse_name("x.sub.example.com."), parse_name("other.net.")]
    with pytest.raises(MasterFileError) as info:
        parse_master("  A 192.0.2.1\n", ORIGIN, 300)
    assert "no owner" in str(info.value)
