"""lbcdn.tlstickets: the key ring, OpenSSL's ticket callback on real handshakes (in memory,
two server contexts standing for two workers), and the fallback when it cannot be installed."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator

import pytest
import trustme

from lbcdn import tlstickets
from lbcdn.tlstickets import KEY_BYTES, TicketKeys


@pytest.fixture
def cert() -> trustme.LeafCert:
    return trustme.CA().issue_cert("a.test")


@pytest.fixture(autouse=True)
def keys() -> Iterator[TicketKeys]:
    """The process's ring for one test, then fresh keys again."""
    ring = TicketKeys.fresh()
    tlstickets.set_keys(ring)
    yield ring
    tlstickets.set_keys(TicketKeys.fresh())


def server(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    tlstickets.install(ctx)
    return ctx


def client(cert: trustme.LeafCert, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
    """A whole handshake over memory BIOs, plus one application byte so that TLS 1.3 tickets
    (sent after the handshake) reach the client: (the client's session, resumed?)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client_ctx.wrap_bio(c_in, c_out, server_hostname="a.test", session=session)
    s = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (c, s):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    s.write(b"x")
    c_in.write(s_out.read())
    assert c.read(1) == b"x"
    assert c.session is not None
    return c.session, c.session_reused


VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def test_ring_rotation_and_wire() -> None:
    ring = TicketKeys.fresh()
    new = bytes(KEY_BYTES)
    assert ring.rotated(new) == TicketKeys(ring.current, ring.next, new)
    assert TicketKeys.from_wire(ring.to_wire()) == ring
    with pytest.raises(ValueError, match="three keys of 80 bytes"):
        TicketKeys.from_wire(ring.to_wire()[:2])
    with pytest.raises(ValueError, match="three keys of 80 bytes"):
        TicketKeys.from_wire([k[:-2] for k in ring.to_wire()])


@pytest.mark.parametrize("version", VERSIONS)
def test_a_ticket_from_one_worker_resumes_on_another(cert: trustme.LeafCert,
                                                     version: ssl.TLSVersion) -> None:
    assert tlstickets.mechanism() == "shared"
    worker_a, worker_b, c = server(cert), server(cert), client(cert, version)
    session, resumed = handshake(worker_a, c)
    assert not resumed
    assert handshake(worker_b, c, session)[1]
    tlstickets.set_keys(TicketKeys.fresh())  # another daemon's keys: a full handshake
    assert not handshake(worker_b, c, session)[1]


@pytest.mark.parametrize("version", VERSIONS)
def test_previous_and_next_keys_are_accepted_older_ones_not(
        cert: trustme.LeafCert, version: ssl.TLSVersion, keys: TicketKeys) -> None:
    ctx, c = server(cert), client(cert, version)
    session, _ = handshake(ctx, c)
    once = keys.rotated(bytes(range(KEY_BYTES)))
    tlstickets.set_keys(once)  # the ticket's key is `previous` now: accepted, and renewed
    renewed, resumed = handshake(ctx, c, session)
    assert resumed
    tlstickets.set_keys(once.rotated(bytes(KEY_BYTES)))  # gone
    assert not handshake(ctx, c, session)[1]
    assert handshake(ctx, c, renewed)[1]  # the renewed ticket is under the key then current
    # a worker still on the old ring accepts what one already rotated issues (its `next`)
    tlstickets.set_keys(once)
    from_ahead, _ = handshake(ctx, c)
    tlstickets.set_keys(keys)
    assert handshake(ctx, c, from_ahead)[1]


def test_fallback_when_the_mechanism_is_missing_is_logged(
        cert: trustme.LeafCert, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def missing() -> None:
        raise AttributeError("SSL_CTX_set_tlsext_ticket_key_evp_cb")
    monkeypatch.setattr(tlstickets, "_OpenSsl", missing)
    monkeypatch.setattr(tlstickets, "_RING", tlstickets._Keyring())
    with caplog.at_level(logging.WARNING, "lbcdn.tls"):
        worker_a, worker_b = server(cert), server(cert)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "shared ticket keys unavailable" in warnings[0]
    assert tlstickets.mechanism().startswith("per-process: AttributeError")
    # OpenSSL's own keys: each context resumes its own tickets only
    c = client(cert, ssl.TLSVersion.TLSv1_3)
    session, _ = handshake(worker_a, c)
    assert handshake(worker_a, c, session)[1]
    assert not handshake(worker_b, c, session)[1]


def test_a_context_pointer_that_does_not_prove_itself_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    openssl = tlstickets._OpenSsl()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert openssl.ctx_pointer(ctx)
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.options |= ssl.OP_NO_TICKET  # options that differ, as another SSL_CTX's would
    wrong = tlstickets.ctypes.c_void_p(openssl.ctx_pointer(other))
    monkeypatch.setattr(tlstickets.ctypes.c_void_p, "from_address", lambda _address: wrong)
    with pytest.raises(ValueError, match="not this context's SSL_CTX"):
        openssl.ctx_pointer(ctx)


def test_a_tls13_resumption_hands_out_a_new_ticket(cert: trustme.LeafCert) -> None:
    """Else a client that keeps one session per connection (wrk, anything on SSL_clear)
    resumes only every other time: OpenSSL sends no ticket on a TLS 1.3 resumption unless the
    key callback asks for one."""
    ctx, c13 = server(cert), client(cert, ssl.TLSVersion.TLSv1_3)
    first, _ = handshake(ctx, c13)
    session, resumed = handshake(ctx, c13, first)
    assert resumed and session.id != first.id
    # TLS 1.2 keeps its ticket (a resumption under the current key issues none)
    c12 = client(cert, ssl.TLSVersion.TLSv1_2)
    first, _ = handshake(ctx, c12)
    session, resumed = handshake(ctx, c12, first)
    assert resumed and session.id == first.id
