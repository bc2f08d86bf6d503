"""The PROXY protocol (HAProxy's spec, versions 1 and 2): the header a load balancer in front
sends before the client's bytes, saying whose connection it is; and the header lbcdn sends to
targets of pools that ask for it.

Pure functions over bytes. `parse` reads the start of a connection:
- returns None while the bytes so far may still become a valid header (call again with more),
- raises ProxyError, naming what is wrong, for anything else (a strict reading: a bad header
  is refused, never guessed at),
- returns a ProxyHeader: how many bytes it took and the client's address, or None for a
  header that gives none (v1 `UNKNOWN`, v2 `LOCAL` or an unspecified/UNIX family), where the
  connection's own address stands.

Limits: a v1 line is at most 107 bytes with its CRLF (the spec's own bound); a v2 header at most
MAX_V2_BYTES, TLVs included (they are skipped, not read: what they carry is not used).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

V1_PREFIX: Final = b"PROXY "
V1_MAX_BYTES: Final = 107
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_BYTES: Final = 16
MAX_V2_BYTES: Final = 4096   # the spec asks receivers to take 536 at least; TLVs fit easily

_V2_ADDR_BYTES: Final = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36}   # TCP/UDP over IPv4/IPv6


class ProxyError(ValueError):
    """A connection's first bytes are not an acceptable PROXY header; the text says why."""


class ProxyHeader:
    __slots__ = ("length", "source")

    def __init__(self, length: int, source: tuple[str, int] | None) -> None:
        self.length = length
        self.source = source


def may_be_header(data: bytes) -> bool:
    """Whether `data`, the first bytes of a connection, start (or may start) a PROXY header of
    either version: what a listener checks on connections from addresses it does not trust."""
    n = min(len(data), len(V2_SIGNATURE))
    return data[:n] == V2_SIGNATURE[:n] or data[:6] == V1_PREFIX[:min(len(data), 6)]


def parse(data: bytes) -> ProxyHeader | None:
    if data[:1] == b"P":
        return _parse_v1(data)
    n = min(len(data), len(V2_SIGNATURE))
    if data[:n] != V2_SIGNATURE[:n]:
        raise ProxyError("no PROXY protocol header (neither the v1 text nor the v2 signature)")
    if len(data) < V2_HEADER_BYTES:
        return None
    return _parse_v2(data)


def _parse_v1(data: bytes) -> ProxyHeader | None:
    n = min(len(data), len(V1_PREFIX))
    if data[:n] != V1_PREFIX[:n]:
        raise ProxyError("no PROXY protocol header (neither the v1 text nor the v2 signature)")
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyError(f"PROXY v1 line longer than {V1_MAX_BYTES} bytes")
        if b"\n" in data:
            raise ProxyError("PROXY v1 line not ended by CRLF")
        return None
    fields = data[:end].split(b" ")
    proto = fields[1] if len(fields) > 1 else b""
    if proto == b"UNKNOWN":
        return ProxyHeader(end + 2, None)   # the rest of the line is to be ignored
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyError(f"PROXY v1: unknown protocol {proto[:16]!r}")
    if len(fields) != 6:
        raise ProxyError("PROXY v1: expected TCP4|TCP6 SRC DST SRCPORT DSTPORT")
    version = 4 if proto == b"TCP4" else 6
    source = _v1_address(fields[2], version)
    _v1_address(fields[3], version)
    sport = _v1_port(fields[4])
    _v1_port(fields[5])
    return ProxyHeader(end + 2, (source, sport))


def _v1_address(text: bytes, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyError(f"PROXY v1: bad address {text[:48]!r}") from None
    if addr.version != version:
        raise ProxyError(f"PROXY v1: {text[:48]!r} is not an IPv{version} address")
    return str(addr)


def _v1_port(text: bytes) -> int:
    # decimal, no sign and no leading zero (the spec's wording), at most 65535
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0") or \
            int(text) > 65535:
        raise ProxyError(f"PROXY v1: bad port {text[:8]!r}")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    ver_cmd, family, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"PROXY v2: unsupported version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyError(f"PROXY v2: unknown command {command}")
    total = V2_HEADER_BYTES + length
    if total > MAX_V2_BYTES:
        raise ProxyError(f"PROXY v2 header of {total} bytes, more than {MAX_V2_BYTES}")
    if len(data) < total:
        return None
    if command == 0:
        return ProxyHeader(total, None)   # LOCAL: the proxy's own connection (health checks)
    need = _V2_ADDR_BYTES.get(family)
    if need is None:
        if family >> 4 > 3 or family & 0x0F > 2:
            raise ProxyError(f"PROXY v2: unknown address family 0x{family:02x}")
        return ProxyHeader(total, None)   # UNSPEC or UNIX: no address to use
    if length < need:
        raise ProxyError(f"PROXY v2: {length} address bytes, family 0x{family:02x} needs {need}")
    if need == 12:
        source = str(ipaddress.IPv4Address(data[16:20]))
        sport = struct.unpack_from("!H", data, 24)[0]
    else:
        source = str(ipaddress.IPv6Address(data[16:32]))
        sport = struct.unpack_from("!H", data, 48)[0]
    return ProxyHeader(total, (source, sport))


def build(version: str, source: tuple[str, int] | None, dest: tuple[str, int]) -> bytes:
    """The header of `version` ("v1" or "v2") for a connection to `dest` made for a client at
    `source`; None: made for lbcdn itself (a health check), said as v1 `UNKNOWN` / v2 `LOCAL`,
    which tell the receiver to use the connection's own address."""
    if source is None:
        return b"PROXY UNKNOWN\r\n" if version == "v1" else V2_SIGNATURE + b"\x20\x00\x00\x00"
    return build_v1(source, dest) if version == "v1" else build_v2(source, dest)


def build_v1(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """A v1 line for a TCP connection from `source` to `dest` (both of one IP version; else
    the line says UNKNOWN, as the spec has it for mixed families)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(dest[0])
    if src.version != dst.version:
        return b"PROXY UNKNOWN\r\n"
    return b"PROXY TCP%d %s %s %d %d\r\n" % (
        src.version, str(src).encode(), str(dst).encode(), source[1], dest[1])


def build_v2(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """A v2 PROXY header for a TCP connection from `source` to `dest` (LOCAL when the two are
    of different IP versions)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(dest[0])
    if src.version != dst.version:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    family, length = (0x11, 12) if src.version == 4 else (0x21, 36)
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, length) + src.packed + \
        dst.packed + struct.pack("!HH", source[1], dest[1])
