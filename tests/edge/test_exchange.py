"""Exchange behaviour that needs a scripted backend: the upgrade tunnel's idle timeout; and
the tables of the exchange's states, for its request side and its response side."""

from __future__ import annotations

import asyncio
import time

import pytest

from lbcdn.edge.exchange import (FINISHED, REQ_BODY, REQ_DISCARD, REQ_DONE, REQ_DROPPED,
                                 REQ_FAILED, REQ_HEAD, REQ_STATE_NAMES, SENDING, SENT,
                                 STATE_NAMES, SWITCHING, TUNNEL, WAITING, InvalidTransition,
                                 next_req_state, next_state)

from tests.e2e.harness import (HOST, listener_port, proxy_config, raw_backend, read_request,
                               running_daemon, wait_closed_by_peer)


async def test_idle_tunnel_is_closed_after_the_idle_timeout() -> None:
    backend_closed = asyncio.Event()

    async def upgrade_then_idle(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-test\r\n"
                     b"Connection: Upgrade\r\n\r\n")
        await writer.drain()
        await reader.read(-1)  # until the proxy closes its side
        backend_closed.set()

    async with raw_backend(upgrade_then_idle) as port:
        config = proxy_config(port)
        config["listeners"][0]["idle_timeout_s"] = 0.5
        async with running_daemon(config):
            reader, writer = await asyncio.open_connection(HOST, listener_port(config))
            writer.write(b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                         b"Upgrade: x-test\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert head.startswith(b"HTTP/1.1 101 ")
            started = time.monotonic()
            # traffic in the tunnel keeps it open past the timeout ...
            for _ in range(3):
                await asyncio.sleep(0.3)
                writer.write(b"ping")
            assert not backend_closed.is_set()
            # ... silence closes both sides
            await wait_closed_by_peer(reader, timeout_s=3)
            assert time.monotonic() - started >= 0.9 + 0.5 - 0.1
            await asyncio.wait_for(backend_closed.wait(), 3)
            writer.close()


@pytest.mark.parametrize(("path"), [
    (WAITING, SENT, FINISHED),                       # a local answer
    (WAITING, SENDING, SENT, FINISHED),              # a proxied or cached response
    (WAITING, SENDING, WAITING, SENT, FINISHED),     # a head taken back for a 502
    (SWITCHING, TUNNEL, FINISHED),                   # an upgrade
    (SWITCHING, SENDING, SENT, FINISHED),            # an upgrade the backend declined
    (WAITING, FINISHED),                             # the client left first
])
def test_the_paths_an_exchange_takes_are_allowed(path: tuple[int, ...]) -> None:
    state = path[0]
    for new in path[1:]:
        state = next_state(state, new)
    assert state == FINISHED


@pytest.mark.parametrize(("state", "new"), [
    (FINISHED, SENT), (FINISHED, FINISHED), (SENT, SENDING), (SENT, WAITING),
    (WAITING, TUNNEL), (TUNNEL, SENDING), (SENDING, TUNNEL), (WAITING, SWITCHING),
])
def test_any_other_transition_raises(state: int, new: int) -> None:
    with pytest.raises(InvalidTransition, match=f"{STATE_NAMES[state]} -> {STATE_NAMES[new]}"):
        next_state(state, new)


@pytest.mark.parametrize(("path"), [
    (REQ_HEAD, REQ_BODY, REQ_DONE),                  # a body read whole
    (REQ_HEAD, REQ_DONE),                            # an empty chunked body
    (REQ_HEAD, REQ_BODY, REQ_DISCARD, REQ_DROPPED),  # answered before the body ended
    (REQ_HEAD, REQ_DISCARD, REQ_DROPPED),            # answered before any of the body
    (REQ_HEAD, REQ_BODY, REQ_FAILED),                # a body too large, or too slow
    (REQ_HEAD, REQ_FAILED),                          # the body timed out before a byte
    (REQ_HEAD, REQ_DISCARD, REQ_FAILED),             # broke a rule while being dropped
])
def test_the_paths_a_request_takes_are_allowed(path: tuple[int, ...]) -> None:
    state = path[0]
    for new in path[1:]:
        state = next_req_state(state, new)
    assert state == path[-1]


@pytest.mark.parametrize(("state", "new"), [
    (REQ_DONE, REQ_BODY), (REQ_DONE, REQ_DONE), (REQ_DONE, REQ_DISCARD), (REQ_DONE, REQ_FAILED),
    (REQ_BODY, REQ_HEAD), (REQ_BODY, REQ_DROPPED), (REQ_DISCARD, REQ_DONE),
    (REQ_DISCARD, REQ_BODY), (REQ_DROPPED, REQ_DONE), (REQ_FAILED, REQ_DONE),
    (REQ_FAILED, REQ_FAILED), (REQ_HEAD, REQ_DROPPED),
])
def test_any_other_request_transition_raises(state: int, new: int) -> None:
    with pytest.raises(InvalidTransition,
                       match=f"{REQ_STATE_NAMES[state]} -> {REQ_STATE_NAMES[new]}"):
        next_req_state(state, new)
