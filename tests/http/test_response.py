"""ResponseReader without sockets: events for every framing, fed whole and byte by byte."""

from __future__ import annotations

import random

import pytest

from lbcdn.http import response
from lbcdn.http.errors import HttpError
from lbcdn.http.head import ResponseHead
from lbcdn.http.response import ResponseReader, ResponseSink, parse_head


class Sink(ResponseSink):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def response_interim(self, head: ResponseHead) -> None:
        self.events.append(("interim", head.status))

    def response_head(self, head: ResponseHead) -> None:
        self.events.append(("head", (head.status, b"".join(head.fwd))))

    def response_body(self, data: bytes) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)  # type: ignore[operator]
        else:
            self.events.append(("body", data))

    def response_done(self, reusable: bool) -> None:
        self.events.append(("done", reusable))

    def response_upgrade(self, head: ResponseHead, rest: bytes) -> None:
        self.events.append(("upgrade", (head.status, head.headers, rest)))


def read(data: bytes, head_only: bool = False, bytewise: bool = False,
         eof: bool = False) -> list[tuple[str, object]]:
    sink = Sink()
    reader = ResponseReader(sink, head_only)
    if bytewise:
        for i in range(len(data)):
            reader.feed(data[i:i + 1])
    else:
        reader.feed(data)
    if eof:
        reader.eof()
    return sink.events


HEAD = b"HTTP/1.1 200 OK\r\nServer: t\r\n"


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_content_length(bytewise: bool) -> None:
    events = read(HEAD + b"Content-Length: 5\r\n\r\nhello", bytewise=bytewise)
    assert events == [("head", (200, b"Server: t\r\nContent-Length: 5\r\n")),
                      ("body", b"hello"), ("done", True)]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_chunked_with_extensions_and_trailers(bytewise: bool) -> None:
    data = (HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n")
    events = read(data, bytewise=bytewise)
    assert events == [("head", (200, b"Server: t\r\n")), ("body", b"hello 0123456789"),
                      ("done", True)]


def test_hop_by_hop_and_connection_named_headers_are_not_forwarded() -> None:
    data = (b"HTTP/1.1 200 OK\r\nConnection: X-Private, keep-alive\r\nKeep-Alive: timeout=5\r\n"
            b"X-Private: 1\r\nX-Public: 2\r\nTrailer: a\r\nUpgrade: h2c\r\n"
            b"Content-Length: 0\r\n\r\n")
    assert read(data) == [("head", (200, b"X-Public: 2\r\nContent-Length: 0\r\n")),
                          ("done", True)]


@pytest.mark.parametrize("size_line", [b"5 ;foo = bar", b"5\t; a=\"b c\"", b"0" * 20 + b"5"],
                         ids=["bws-in-ext", "tab-and-quoted-ext", "leading-zeros"])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_chunk_size_lines_rfc9112_allows(size_line: bytes, bytewise: bool) -> None:
    # RFC 9112 7.1: chunk-size is 1*HEXDIG; 7.1.1: BWS around chunk-ext's ";" and "="
    data = (HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nhello\r\n"
            b"0\r\n\r\n")
    assert read(data, bytewise=bytewise) == [("head", (200, b"Server: t\r\n")),
                                             ("body", b"hello"), ("done", True)]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_connection_cannot_remove_the_framing(bytewise: bool) -> None:
    # RFC 9112 6.3: the body is framed by Content-Length or chunked whatever Connection names
    data = (b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-A\r\nX-A: 1\r\n"
            b"Content-Length: 2\r\n\r\nok")
    assert read(data, bytewise=bytewise) == [("head", (200, b"Content-Length: 2\r\n")),
                                             ("body", b"ok"), ("done", True)]
    assert parse_head(data[:-2]).content_length == 2
    data = (b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert read(data, bytewise=bytewise) == [("head", (200, b"")), ("body", b"ok"),
                                             ("done", True)]


def test_a_date_named_in_connection_is_removed_and_the_head_has_none() -> None:
    # RFC 9110 7.6.1 removes it; 6.6.1 then has the proxy add its own
    head = parse_head(b"HTTP/1.1 200 OK\r\nConnection: Date\r\n"
                      b"Date: Wed, 25 Nov 2026 20:00:00 GMT\r\nContent-Length: 0\r\n\r\n")
    assert head.fwd == [b"Content-Length: 0", b"\r\n"] and not head.has_date


def test_close_delimited_ends_at_eof() -> None:
    events = read(HEAD + b"\r\nsome body", eof=True)
    assert events == [("head", (200, b"Server: t\r\n")), ("body", b"some body"),
                      ("done", False)]


def test_truncated_body_is_not_a_response() -> None:
    sink = Sink()
    reader = ResponseReader(sink, False)
    reader.feed(HEAD + b"Content-Length: 10\r\n\r\nabc")
    assert reader.eof() is False
    assert sink.events[-1] == ("body", b"abc")


def test_connection_close_and_http10_are_not_reusable() -> None:
    assert read(HEAD + b"Connection: close\r\nContent-Length: 0\r\n\r\n")[-1] == ("done", False)
    assert read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")[-1] == ("done", False)
    assert read(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
                )[-1] == ("done", True)


def test_bytes_after_the_response_make_it_not_reusable() -> None:
    assert read(HEAD + b"Content-Length: 2\r\n\r\nokEXTRA") == [
        ("head", (200, b"Server: t\r\nContent-Length: 2\r\n")), ("body", b"ok"),
        ("done", False)]


@pytest.mark.parametrize("status, fwd", [(204, b""), (304, b"Content-Length: 5\r\n")])
def test_no_body_statuses(status: int, fwd: bytes) -> None:
    # RFC 9110 8.6: a 204 has no Content-Length; a 304's is the representation's length
    data = b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status
    assert read(data) == [("head", (status, fwd)), ("done", True)]
    assert parse_head(data).content_length == (None if status == 204 else 5)


def test_interim_responses_forward_no_content_length() -> None:
    # RFC 9110 8.6: nor may a 1xx have one
    head = parse_head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nContent-Length: 0\r\n\r\n")
    assert head.lead == b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n"
    assert head.content_length is None


def test_head_request_ignores_content_length() -> None:
    assert read(HEAD + b"Content-Length: 100\r\n\r\n", head_only=True)[-1] == ("done", True)


def test_interim_responses_come_before_the_final_one() -> None:
    data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            + HEAD + b"Content-Length: 1\r\n\r\nx")
    assert [e[0] for e in read(data)] == ["interim", "interim", "head", "body", "done"]


def test_switching_protocols_hands_over_the_rest() -> None:
    events = read(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n\x81\x02hi")
    assert events == [("upgrade", (101, [(b"Upgrade", b"websocket")], b"\x81\x02hi"))]


@pytest.mark.parametrize("line, lead", [
    (b"HTTP/1.1 200", b"HTTP/1.1 200 OK"),        # no SP before the empty reason
    (b"HTTP/1.1 200 ", b"HTTP/1.1 200 OK"),
    (b"HTTP/1.0 404", b"HTTP/1.1 404 Not Found"),
    (b"HTTP/1.1 200  two spaces", b"HTTP/1.1 200  two spaces"),
    (b"HTTP/1.1 200 \t\x80\xff", b"HTTP/1.1 200 \t\x80\xff"),
])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_status_lines_with_odd_or_no_reasons(line: bytes, lead: bytes, bytewise: bool) -> None:
    # RFC 9112 4: the reason phrase may be empty; ours is then the standard one
    data = line + b"\r\nContent-Length: 2\r\n\r\nok"
    status = int(line[9:12])
    assert read(data, bytewise=bytewise) == [
        ("head", (status, b"Content-Length: 2\r\n")), ("body", b"ok"),
        ("done", line.startswith(b"HTTP/1.1"))]
    assert parse_head(data[:-2]).lead == lead + b"\r\nContent-Length: 2\r\n"
    assert read(b"HTTP/1.1 100\r\n\r\n" + data)[0] == ("interim", 100)


def test_random_status_lines_parse_or_are_502() -> None:
    rng = random.Random(9112)
    odd = [b" ", b"  ", b"\t", b"\r", b"\n", b"1", b"x", b"-", b"\x00", b"\x7f", b"\xff", b":"]

    def sp() -> bytes:  # mostly the SP the grammar wants
        return b" " if rng.random() < 0.7 else b"".join(rng.sample(odd, rng.randrange(4)))

    accepted = 0
    for _ in range(3000):
        # `HTTP/1.x NNN reason` with pieces left out, doubled or replaced by odd bytes
        line = (rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.", b"HTTP/2"]) + sp()
                + (b"%d" % rng.randrange(1200))[:rng.randrange(1, 5)] + sp()
                + rng.choice([b"", b"OK", b"Not Found"]) + sp())
        data = line + rng.choice([b"\r\n", b"\r\nX: 1\r\n"]) + b"Content-Length: 0\r\n\r\n"
        try:
            read(data, eof=True)
        except HttpError as e:  # anything else escaping is a bug
            assert e.status == 502
        else:
            accepted += 1
    assert accepted > 100  # and those went through the reader


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 099 OK\r\n\r\n",
    b"HTTP/1.1 600 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n000fffffffffffffffff\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 ;x\nhello\r\n0\r\n\r\n",
], ids=["bare-lf", "nul", "obs-fold", "space-before-colon", "no-colon", "http2", "status-4",
        "status-low", "status-high", "cl-twice", "cl-plus", "cl-and-te", "te-gzip",
        "chunk-0x", "chunk-minus", "chunk-space", "chunk-bare-lf", "chunk-too-long",
        "chunk-overflow", "chunk-overflow-after-zeros", "chunk-space-no-ext",
        "chunk-ext-bare-lf"])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_malformed_is_502(data: bytes, bytewise: bool) -> None:
    with pytest.raises(HttpError) as info:
        read(data, bytewise=bytewise)
    assert info.value.status == 502


def test_head_larger_than_the_limit_is_refused_before_it_ends() -> None:
    with pytest.raises(HttpError):
        read(HEAD + b"X: " + b"a" * 70000)


# -- remembered heads ------------------------------------------------------------------------

REPEATED = [
    HEAD + b"Content-Length: 5\r\n\r\nhello",
    HEAD + b"Content-Length: 5\r\n\r\nhel",                       # body still to come
    HEAD + b"Content-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",  # bytes after the response
    HEAD + b"Content-Length: 0\r\n\r\n" + HEAD + b"Content-Length: 0\r\n\r\n",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    HEAD + b"Connection: close, X-A\r\nX-A: 1\r\nX-B: 2\r\n\r\nrest",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + HEAD + b"Content-Length: 1\r\n\r\nx",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
]


@pytest.fixture
def cold(monkeypatch: pytest.MonkeyPatch) -> None:
    """No head remembered from earlier tests."""
    response._parsed.clear()  # a Final table: compiled code holds it, so empty it in place
    monkeypatch.setattr(response._recent, "last", None)


@pytest.mark.usefixtures("cold")
@pytest.mark.parametrize("data", REPEATED)
def test_a_remembered_head_reads_the_same_as_a_fresh_one(data: bytes) -> None:
    fresh = read(data, eof=True)
    assert response._recent.last is not None       # remembered: the next read takes the shortcut
    assert read(data, eof=True) == fresh
    response._recent.last = None                   # remembered in the table only
    assert read(data, eof=True) == fresh


@pytest.mark.usefixtures("cold")
def test_a_read_that_starts_with_the_remembered_head_ends_its_head_there() -> None:
    first = HEAD + b"Content-Length: 4\r\n\r\n"
    assert read(first + b"body")[-1] == ("done", True)
    # the same head, then a body that looks like more header lines and a blank line
    assert read(first + b"X: 1\r\n\r\nmore") == [
        ("head", (200, b"Server: t\r\nContent-Length: 4\r\n")), ("body", b"X: 1"),
        ("done", False)]


@pytest.mark.usefixtures("cold")
def test_a_repeated_head_is_shared_and_leads_with_our_status_line() -> None:
    data = HEAD + b"Content-Length: 0\r\n\r\n"
    first = parse_head(data)
    assert parse_head(data) is first
    assert first.lead == b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 0\r\n"
    # a 1.0 backend and an empty reason: our version, the standard reason
    assert parse_head(b"HTTP/1.0 404 \r\nX: 1\r\n\r\n").lead == \
        b"HTTP/1.1 404 Not Found\r\nX: 1\r\n"
    assert parse_head(b"HTTP/1.1 204 \r\n\r\n").lead == b"HTTP/1.1 204 No Content\r\n"
    assert parse_head(b"HTTP/1.1 413 \r\n\r\n").lead == b"HTTP/1.1 413 Content Too Large\r\n"
    # an unregistered code keeps the backend's reason, or has none
    assert parse_head(b"HTTP/1.1 599 Mine\r\n\r\n").lead == b"HTTP/1.1 599 Mine\r\n"
    assert parse_head(b"HTTP/1.1 599\r\n\r\n").lead == b"HTTP/1.1 599 \r\n"


@pytest.mark.parametrize("head, has_date", [
    (HEAD + b"Date: Wed, 25 Nov 2026 20:00:00 GMT\r\n\r\n", True),
    (HEAD + b"dATE: Wed, 25 Nov 2026 20:00:00 GMT\r\n\r\n", True),
    (HEAD + b"X-Date: 1\r\n\r\n", False),
    (HEAD + b"\r\n", False),
])
def test_a_head_says_whether_it_has_a_date(head: bytes, has_date: bool) -> None:
    assert parse_head(head).has_date is has_date


@pytest.mark.usefixtures("cold")
def test_the_table_of_heads_is_bounded() -> None:
    for i in range(response.MEMO_MAX_ENTRIES + 10):
        parse_head(HEAD + b"X-N: %d\r\n\r\n" % i)
    assert 0 < len(response._parsed) <= response.MEMO_MAX_ENTRIES
    big = HEAD + b"X: " + b"a" * response.MEMO_MAX_HEAD_BYTES + b"\r\n\r\n"
    parse_head(big)
    assert big not in response._parsed


@pytest.mark.usefixtures("cold")
def test_a_malformed_head_is_never_remembered() -> None:
    bad = b"HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n"
    for _ in range(2):
        with pytest.raises(HttpError):
            read(bad)
    assert response._parsed == {} and response._recent.last is None


@pytest.mark.usefixtures("cold")
def test_header_values_are_read_case_blind_and_upgrade_is_forwarded_as_sent() -> None:
    head = parse_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: \tWebSocket/13 \r\n"
                      b"Connection:Upgrade\r\n\r\n")
    assert head.headers == [(b"Upgrade", b"WebSocket/13")] and head.fwd == []
    http10 = parse_head(b"HTTP/1.0 200 OK\r\nConnection: KEEP-ALIVE\r\nX-A: B\r\n"
                        b"Transfer-Encoding: Chunked \r\n\r\n")
    assert http10.keep_alive and http10.chunked and http10.fwd == [b"X-A: B", b"\r\n"]
    assert not parse_head(b"HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n").keep_alive
