"""Header actions: templates with #{...} variables, and set/add/remove/default on forwarded
lines (a request's four pieces a field, a response's one block)."""

from __future__ import annotations

import pytest

from lbcdn.http.headeractions import HeaderActions, compile_template, render, rewrite

VALUES = (b"192.0.2.7", b"rid-1", b"www.example.com", b"https")


def fields(fwd: list[bytes]) -> list[tuple[bytes, bytes]]:
    lines = b"".join(fwd).split(b"\r\n")
    return [(n, v.strip()) for n, _, v in (line.partition(b":") for line in lines if line)]


@pytest.mark.parametrize("text, rendered", [
    ("plain", b"plain"),
    ("#{client_ip}", b"192.0.2.7"),
    ("for=#{client_ip}; id=#{request_id}", b"for=192.0.2.7; id=rid-1"),
    ("#{scheme}://#{host}/", b"https://www.example.com/"),
    ("#{host}#{host}", b"www.example.comwww.example.com"),
    ("caf\u00e9", "caf\u00e9".encode()),
    ("#{", b"#{"),
])
def test_templates(text: str, rendered: bytes) -> None:
    assert render(compile_template(text), VALUES) == rendered


@pytest.mark.parametrize("text, message", [
    ("#{path}", "unknown variable #{path}"),
    ("#{}", "unknown variable #{}"),
    ("a\r\nX-Evil: 1", "control characters"),
    ("a\x00", "control characters"),
])
def test_bad_templates(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_template(text)


def test_a_variable_cannot_break_a_line() -> None:
    assert render(compile_template("#{host}"), (b"", b"", b"a\r\nX-Evil: 1", b"")) == \
        b"aX-Evil: 1"


@pytest.mark.parametrize("name, message", [
    ("Content-Length", "written by lbcdn"), ("transfer-encoding", "written by lbcdn"),
    ("Host", "written by lbcdn"), ("Connection", "written by lbcdn"),
    ("Bad Name", "not a header field name"), ("", "not a header field name"),
])
def test_reserved_and_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeaderActions(remove=[name])
    with pytest.raises(ValueError, match=message):
        HeaderActions(set={name: "x"})


REQUEST = [b"Accept", b": ", b"*/*", b"\r\n", b"X-Drop", b": ", b"1", b"\r\n",
           b"x-set", b": ", b"old", b"\r\n", b"X-Set", b": ", b"older", b"\r\n",
           b"X-Keep", b": ", b"k", b"\r\n"]


def test_set_add_remove_on_request_pieces() -> None:
    actions = HeaderActions(remove=["x-DROP"], set={"X-Set": "#{client_ip}"},
                            add={"X-Add": "a", "X-Keep": "second"})
    assert fields(actions.apply(REQUEST, VALUES)) == [
        (b"Accept", b"*/*"), (b"X-Keep", b"k"), (b"X-Set", b"192.0.2.7"),
        (b"X-Add", b"a"), (b"X-Keep", b"second")]


def test_defaults_only_where_absent() -> None:
    actions = HeaderActions(default={"X-Keep": "no", "X-Frame-Options": "DENY"})
    assert fields(actions.apply(REQUEST, VALUES))[-2:] == [
        (b"X-Keep", b"k"), (b"X-Frame-Options", b"DENY")]


def test_response_block() -> None:
    block = [b"Content-Type: text/html\r\nX-Powered-By: php\r\nSet-Cookie: a=1", b"\r\n"]
    out = rewrite(block, frozenset({b"x-powered-by"}), [(b"X-Served", b"edge")], [])
    assert b"".join(out) == (b"Content-Type: text/html\r\nSet-Cookie: a=1\r\n"
                             b"X-Served: edge\r\n")
    assert rewrite([], frozenset(), [], [(b"A", b"b")]) == [b"A", b": ", b"b", b"\r\n"]


def test_empty_actions_are_false_and_lines_for_local_answers() -> None:
    assert not HeaderActions()
    actions = HeaderActions(set={"A": "#{scheme}"}, add={"B": "2"}, default={"C": "3"})
    assert actions
    assert actions.lines(VALUES) == b"A: https\r\nB: 2\r\nC: 3\r\n"


@pytest.mark.parametrize("name", ["X-Forwarded-For", "via", "X-Request-Id"])
def test_request_fields_lbcdn_writes_are_refused_on_requests_only(name: str) -> None:
    with pytest.raises(ValueError, match="on forwarded requests"):
        HeaderActions(set={name: "x"}, request=True)
    assert HeaderActions(set={name: "x"})
