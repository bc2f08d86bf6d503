"""TSIG (RFC 8945): checking signed requests, signing replies and NOTIFYs (pure, no I/O).

Job: what transfers, NOTIFY and signed queries need to authenticate each other with shared
secrets, as Knot, BIND and NSD do.

Rules:
- Algorithms: hmac-sha256, hmac-sha1 and hmac-sha512 (RFC 8945 6: SHA-256 is the one to use).
- A request is checked in the RFC's order (5.2): the key (unknown name, or another algorithm
  than the key's -> BADKEY), the MAC (its length: more than the digest, or less than half of
  it or 10 octets -> FORMERR; a wrong one -> BADSIG), the time (more than the fudge away from
  ours -> BADTIME), truncation (a valid truncated MAC -> BADTRUNC: only full MACs are
  accepted here, a local policy 5.2.4 allows).
- Error replies are NOTAUTH with the error in their TSIG record: BADKEY, BADSIG and BADTRUNC
  unsigned (MAC size 0, 5.3.2), BADTIME signed, with the request's time signed and ours in
  Other Data. FORMERR replies carry no TSIG.
- Replies to a good request are signed with its key, over the request's MAC; the messages of a
  multi-message reply (AXFR) are each signed, every one after the first over the previous
  MAC and only the timers (5.3.1).
- Digests are over the message as it was before the TSIG was added (original id, ARCOUNT
  without it) and the TSIG variables with names in canonical (lower-case, uncompressed) form.
- Verifying is done on the original bytes; names in a TSIG may be compressed, they are read
  following pointers. The answer to a NOTIFY we signed counts only when signed by the same
  key over our MAC (`verify(..., request_mac=)`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lbcdn.dns.config import TsigKeyConfig, decode_secret, key_name
from lbcdn.dns.names import Name, to_wire
from lbcdn.dns.wire import FORMERR, T_TSIG, parse_query

NOERROR, NOTAUTH = 0, 9
BADSIG, BADKEY, BADTIME, BADTRUNC = 16, 17, 18, 22
CLASS_ANY = 255
FUDGE_S = 300
ERROR_NAMES = {FORMERR: "FORMERR", BADSIG: "BADSIG", BADKEY: "BADKEY", BADTIME: "BADTIME",
               BADTRUNC: "BADTRUNC"}

ALGORITHMS: dict[str, tuple[Name, str]] = {   # name in config -> (wire name, hashlib name)
    "hmac-sha256": ((b"hmac-sha256",), "sha256"),
    "hmac-sha1": ((b"hmac-sha1",), "sha1"),
    "hmac-sha512": ((b"hmac-sha512",), "sha512"),
}


class KeyProblem(ValueError):
    """Keys that cannot be built from the config; `problems` are (YAML path, message)."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{p}: {m}" for p, m in self.problems))


@dataclass(frozen=True, slots=True)
class Key:
    name: Name          # lower-cased labels
    algorithm: str      # a key of ALGORITHMS
    secret: bytes

    @property
    def text(self) -> str:
        return b".".join(self.name).decode("ascii", "replace")

    def digest(self, data: bytes) -> bytes:
        return hmac.new(self.secret, data, ALGORITHMS[self.algorithm][1]).digest()


Keyring = Mapping[Name, Key]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What checking a request's TSIG found."""
    error: int           # NOERROR, FORMERR, BADKEY, BADSIG, BADTIME or BADTRUNC
    key: Key | None      # the key whose MAC matched (also on BADTIME, BADTRUNC)
    key_name: Name
    algorithm: Name
    mac: bytes           # the request's MAC: the reply is signed over it
    time_signed: int
    message: bytes       # the request without its TSIG, as it was signed

    @property
    def key_text(self) -> str:
        return b".".join(self.key_name).decode("ascii", "replace")


def build_keys(configs: Sequence[TsigKeyConfig], base_dir: str = ".",
               path: str = "dns.tsig_keys") -> dict[Name, Key]:
    """`dns.tsig_keys` -> keyring. Secrets: `secret` (base64; `${ENV}` in the config reads the
    environment) or `secret_file` (a file holding the base64 text, relative to `base_dir`).
    Raises KeyProblem naming the YAML path of each bad key."""
    keys: dict[Name, Key] = {}
    problems: list[tuple[str, str]] = []
    for i, kc in enumerate(configs):
        where = f"{path}[{i}]"
        secret_text, secret_file = kc.secret, kc.secret_file
        field = "secret"
        if secret_file is not None:
            field = "secret_file"
            try:
                with open(os.path.join(base_dir, secret_file), encoding="ascii") as f:
                    secret_text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                problems.append((f"{where}.secret_file", f"cannot read {secret_file}: "
                                 f"{getattr(e, 'strerror', None) or e}"))
                continue
        try:
            secret = decode_secret(secret_text or "")
        except ValueError as e:
            problems.append((f"{where}.{field}", str(e)))
            continue
        name = key_name(kc.name)
        keys[name] = Key(name, kc.algorithm, secret)
    if problems:
        raise KeyProblem(problems)
    return keys


class SparseLog:
    """Warnings a flood of spoofed UDP packets could repeat: the 1st, 2nd, 4th, 8th... are
    logged, with the count, so they are seen but cannot fill the log."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.count = 0

    def warning(self, msg: str, *args: object) -> None:
        self.count += 1
        n = self.count
        if n & (n - 1) == 0:
            self.logger.warning(msg + " (%d so far)", *args, n)


# -- reading ------------------------------------------------------------------------------

def _read_name(data: bytes, pos: int) -> tuple[Name, int]:
    """The (possibly compressed) name at `pos` -> (labels lower-cased, end offset where the
    name ends in place). IndexError/ValueError on garbage."""
    labels: list[bytes] = []
    end = -1
    jumps = 0
    while True:
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = pos + 2
            jumps += 1
            if jumps > 64:
                raise ValueError("compression loop")
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            continue
        if length & 0xC0:
            raise ValueError("bad label type")
        if length == 0:
            return tuple(labels), (pos + 1 if end < 0 else end)
        if pos + 1 + length > len(data):
            raise IndexError("label past the end")
        labels.append(data[pos + 1:pos + 1 + length].lower())
        pos += 1 + length


def _u16(data: bytes, pos: int) -> int:
    if pos + 2 > len(data):
        raise IndexError("short")
    return int.from_bytes(data[pos:pos + 2], "big")


def _variables(key_name: Name, algorithm: Name, time_signed: int, error: int,
               other: bytes) -> bytes:
    return (to_wire(key_name) + CLASS_ANY.to_bytes(2, "big") + b"\0\0\0\0"
            + to_wire(algorithm) + _timers(time_signed) + error.to_bytes(2, "big")
            + len(other).to_bytes(2, "big") + other)


def _timers(time_signed: int) -> bytes:
    return time_signed.to_bytes(6, "big") + FUDGE_S.to_bytes(2, "big")


def verify(message: bytes, at: int, keys: Keyring, now: float, *,
           request_mac: bytes | None = None) -> Verdict:
    """Check the TSIG record at offset `at` (wire.Query.tsig, wire.tsig_offset) of a request,
    or of the reply to a request we signed with `request_mac`."""
    try:
        owner, pos = _read_name(message, at)
        if _u16(message, pos) != T_TSIG or pos + 10 > len(message):
            raise ValueError("not a TSIG")
        rdlen = _u16(message, pos + 8)
        rd = pos + 10
        if rd + rdlen != len(message):
            raise ValueError("TSIG is not the last record")
        algorithm, p = _read_name(message, rd)
        time_signed = int.from_bytes(message[p:p + 6], "big")
        fudge = _u16(message, p + 6)
        mac_size = _u16(message, p + 8)
        mac = message[p + 10:p + 10 + mac_size]
        p += 10 + mac_size
        original_id = _u16(message, p)
        other_len = _u16(message, p + 4)
        if p + 6 + other_len != len(message) or len(mac) != mac_size:
            raise ValueError("TSIG rdata length")
    except (IndexError, ValueError):
        return Verdict(FORMERR, None, (), (), b"", 0, message)
    arcount = _u16(message, 10) - 1
    stripped = (original_id.to_bytes(2, "big") + message[2:10] + arcount.to_bytes(2, "big")
                + message[12:at])
    verdict = Verdict(NOERROR, None, owner, algorithm, mac, time_signed, stripped)
    key = keys.get(owner)
    if key is None or ALGORITHMS[key.algorithm][0] != algorithm:
        return _with(verdict, BADKEY, None)
    full = ALGORITHMS[key.algorithm][1]
    size = hashlib.new(full).digest_size
    if mac_size > size or mac_size < max(10, (size + 1) // 2):
        return _with(verdict, FORMERR, None)
    prior = b"" if request_mac is None else len(request_mac).to_bytes(2, "big") + request_mac
    expected = key.digest(prior + stripped + _variables(owner, algorithm, time_signed,
                                                        _u16(message, p + 2),
                                                        message[p + 6:p + 6 + other_len]))
    if not hmac.compare_digest(expected[:mac_size], mac):
        return _with(verdict, BADSIG, None)
    if abs(int(now) - time_signed) > fudge:
        return _with(verdict, BADTIME, key)
    if mac_size < size:
        return _with(verdict, BADTRUNC, key)
    return _with(verdict, NOERROR, key)


def _with(v: Verdict, error: int, key: Key | None) -> Verdict:
    return Verdict(error, key, v.key_name, v.algorithm, v.mac, v.time_signed, v.message)


# -- writing ------------------------------------------------------------------------------

def _append(message: bytes, key_name: Name, algorithm: Name, time_signed: int, mac: bytes,
            original_id: int, error: int, other: bytes) -> bytes:
    rdata = (to_wire(algorithm) + _timers(time_signed) + len(mac).to_bytes(2, "big") + mac
             + original_id.to_bytes(2, "big") + error.to_bytes(2, "big")
             + len(other).to_bytes(2, "big") + other)
    record = (to_wire(key_name) + T_TSIG.to_bytes(2, "big") + CLASS_ANY.to_bytes(2, "big")
              + b"\0\0\0\0" + len(rdata).to_bytes(2, "big") + rdata)
    arcount = _u16(message, 10) + 1
    return message[:10] + arcount.to_bytes(2, "big") + message[12:] + record


def sign(message: bytes, key: Key, now: float, *, prior_mac: bytes | None = None,
         timers_only: bool = False, error: int = NOERROR, time_signed: int | None = None,
         other: bytes = b"") -> tuple[bytes, bytes]:
    """`message` with a TSIG record by `key` appended -> (signed message, its MAC).
    `prior_mac`: the request's MAC for a reply (or the previous message's for the next
    message of a multi-message reply, with `timers_only`); None for a request."""
    algorithm = ALGORITHMS[key.algorithm][0]
    signed_at = int(now) if time_signed is None else time_signed
    data = b"" if prior_mac is None else len(prior_mac).to_bytes(2, "big") + prior_mac
    data += message
    data += (_timers(signed_at) if timers_only
             else _variables(key.name, algorithm, signed_at, error, other))
    mac = key.digest(data)
    return (_append(message, key.name, algorithm, signed_at, mac, _u16(message, 0), error,
                    other), mac)


def record_size(key: Key) -> int:
    """Bytes the TSIG record of a reply signed with `key` adds (no error, no other data): an
    answer over UDP must leave room for it (RFC 8945 5.3: a signed reply that does not fit is
    truncated, and still signed)."""
    algorithm = ALGORITHMS[key.algorithm]
    mac = hashlib.new(algorithm[1]).digest_size
    return len(to_wire(key.name)) + 10 + len(to_wire(algorithm[0])) + 16 + mac


def sign_replies(replies: Sequence[bytes], verdict: Verdict, now: float) -> list[bytes]:
    """The replies to a request that passed `verify`, each signed (RFC 8945 5.3.1)."""
    key = verdict.key
    assert key is not None and verdict.error == NOERROR
    out: list[bytes] = []
    mac = verdict.mac
    for i, reply in enumerate(replies):
        signed, mac = sign(reply, key, now, prior_mac=mac, timers_only=i > 0)
        out.append(signed)
    return out


def error_reply(verdict: Verdict, now: float, *, max_udp: int = 1232) -> bytes | None:
    """The reply to a request whose TSIG failed: its header and question, an OPT if it had
    one, rcode NOTAUTH and the TSIG error (FORMERR: no TSIG). None: say nothing."""
    q = parse_query(verdict.message)
    if q is None:
        return None
    rcode = FORMERR if verdict.error == FORMERR else NOTAUTH
    flags = 0x8000 | (q.flags & 0x7900) | rcode
    question = q.question or b""
    opt = b""
    if q.edns is not None:
        opt = b"\0" + (41).to_bytes(2, "big") + max(512, max_udp).to_bytes(2, "big") \
            + b"\0\0\0\0\0\0"
    header = (q.id.to_bytes(2, "big") + flags.to_bytes(2, "big")
              + (1 if question else 0).to_bytes(2, "big") + b"\0\0\0\0"
              + (1 if opt else 0).to_bytes(2, "big"))
    reply = header + question + opt
    if verdict.error == FORMERR:
        return reply
    if verdict.error == BADTIME and verdict.key is not None:
        return sign(reply, verdict.key, now, prior_mac=verdict.mac, error=BADTIME,
                    time_signed=verdict.time_signed, other=int(now).to_bytes(6, "big"))[0]
    return _append(reply, verdict.key_name, verdict.algorithm, verdict.time_signed, b"", q.id,
                   verdict.error, b"")
