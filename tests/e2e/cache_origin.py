"""A scriptable origin for the edge-cache tests: counts its requests per path, records them,
and answers what the test set for each path (status, headers, body, delay; a callable for
conditional answers). Real sockets on 127.0.0.1, a port picked at run time."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from tests.e2e.harness import raw_backend, read_request

Headers = list[tuple[str, str]]


@dataclass
class Answer:
    status: int = 200
    headers: Headers = field(default_factory=list)
    body: bytes = b"hello"
    delay_s: float = 0.0
    chunked: bool = False
    stall_s: float = 0.0      # chunked: a pause after the first half of the body


Script = Answer | Callable[[str, Headers], Answer]


class Origin:
    def __init__(self) -> None:
        self.port = 0
        self.script: dict[str, Script] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, Headers]] = []
        self.peers: list[int] = []   # the client port of each request's connection

    def set(self, path: str, answer: Script) -> None:
        self.script[path] = answer

    def last_headers(self, path: str) -> dict[str, str]:
        for line, headers in reversed(self.requests):
            if line.split(" ")[1].split("?")[0] == path:
                return {n.lower(): v for n, v in headers}
        raise KeyError(path)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line, headers, _ = await read_request(reader, timeout_s=30)
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            method, target, _ = line.split(" ")
            path = target.split("?")[0]
            self.hits[path] += 1
            self.requests.append((line, headers))
            self.peers.append(writer.get_extra_info("peername")[1])
            script = self.script.get(path, Answer(404, [], b"no such path"))
            answer = script(method, headers) if callable(script) else script
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
            head = [f"HTTP/1.1 {answer.status} X"] + [f"{n}: {v}" for n, v in answer.headers]
            no_body = answer.status in (204, 304) or method == "HEAD"
            if answer.chunked and not no_body:
                head.append("Transfer-Encoding: chunked")
                data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
                half = len(answer.body) // 2
                for first, part in ((True, answer.body[:half]), (False, answer.body[half:])):
                    if part:
                        data += b"%x\r\n%s\r\n" % (len(part), part)
                    if answer.stall_s and first:
                        writer.write(data)
                        await writer.drain()
                        data = b""
                        await asyncio.sleep(answer.stall_s)
                data += b"0\r\n\r\n"
            else:
                if answer.status not in (204, 304):
                    head.append(f"Content-Length: {len(answer.body)}")
                data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
                if not no_body:
                    data += answer.body
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def scripted_origin() -> AsyncIterator[Origin]:
    origin = Origin()
    async with raw_backend(origin.handle) as port:
        origin.port = port
        yield origin
