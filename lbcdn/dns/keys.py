"""DNSSEC keys of the signed zones: generation, DNSKEY/DS record data, signing, and their file.

Job: one combined signing key (CSK, flags 257: it signs the DNSKEY set and every other set)
per signed zone, made with `cryptography`, plus the keys of a rollover in progress.

Rules:
- Algorithms: ECDSAP256SHA256 (13, RFC 6605) and ED25519 (15, RFC 8080). Public keys and
  signatures in the RFCs' wire forms (ECDSA: x|y and r|s, 32 bytes each).
- Every key kept is in the DNSKEY set and signs everything. A CSK rollover is by double
  signatures (RFC 6781 4.1.2, for a CSK as in RFC 7583 3.3.1): `start` adds a second key, so
  every set carries two signatures and a resolver holding the old DNSKEY set, or trusting
  the old DS, still validates; `finish` drops the older key once the new DS is at the
  parent and the old DNSKEY set has expired from caches (its TTL, plus the DS TTL).
- On a schedule (`rollover_step`, a pure function of the keys and `now`): "start" once the
  key is `lifetime_s` old, "finish" `wait_s` after the new key was made. Both times come
  from the keys' `created`, which the file keeps, so a restart mid-rollover goes on where
  it was.
- The file: `<state_dir>/dnssec/<zone>.json` (zone name without the trailing dot, root as
  `root`), private keys as PKCS#8 PEM, mode 0600, replaced atomically (lbcdn.atomicfile).
  Keys are generated only when a signed zone has no file yet, and the file is written before
  the key is used, so a restart signs with the same key and the DS at the registrar stays
  right. DNS runs in the control process only (lbcdn.control), so there is one writer.
  The file also keeps the last SOA serial served with the keys (`serial`), so that a
  signed zone's serial never goes back across restarts (lbcdn.dns.engine).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from functools import cached_property

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from lbcdn.atomicfile import write_atomic
from lbcdn.dns.names import Name, to_text, to_wire

ALGORITHMS: dict[str, int] = {"ECDSAP256SHA256": 13, "ED25519": 15}
ALGORITHM_NAMES: dict[int, str] = {v: k for k, v in ALGORITHMS.items()}
CSK_FLAGS = 257          # ZONE + SEP: one key for the DNSKEY set and the rest
PROTOCOL = 3
DIGEST_SHA256 = 2

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class DnssecKeyError(ValueError):
    """A key file that cannot be read or a rollover step out of order."""


@dataclass(frozen=True)
class ZoneKey:
    private: PrivateKey
    algorithm: int
    created: int          # unix time

    @cached_property   # serializing the public key costs more than the signature
    def dnskey(self) -> bytes:
        """DNSKEY record data (RFC 4034 2.1)."""
        return struct.pack("!HBB", CSK_FLAGS, PROTOCOL, self.algorithm) + _public(self.private)

    @cached_property
    def tag(self) -> int:
        return key_tag(self.dnskey)

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(data)
        r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _public(private: PrivateKey) -> bytes:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
    point = private.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
    return point[1:]  # drop the 0x04 prefix: RFC 6605 wants x|y


def key_tag(dnskey: bytes) -> int:
    """RFC 4034 appendix B."""
    acc = 0
    for i, b in enumerate(dnskey):
        acc += b if i & 1 else b << 8
    acc += (acc >> 16) & 0xFFFF
    return acc & 0xFFFF


def ds_rdata(origin: Name, dnskey: bytes, algorithm: int) -> bytes:
    """DS record data with a SHA-256 digest (RFC 4509), as the parent publishes it."""
    digest = hashlib.sha256(to_wire(origin) + dnskey).digest()
    return struct.pack("!HBB", key_tag(dnskey), algorithm, DIGEST_SHA256) + digest


def generate(algorithm: int, now: float) -> ZoneKey:
    private: PrivateKey
    if algorithm == 15:
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == 13:
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise DnssecKeyError(f"unsupported DNSSEC algorithm {algorithm}")
    return ZoneKey(private, algorithm, int(now))


def describe(origin: Name, keys: list[ZoneKey]) -> dict[str, object]:
    """What the admin API shows: the zone and `key_rows`."""
    return {"zone": to_text(origin), "keys": key_rows(origin, keys)}


def key_rows(origin: Name, keys: list[ZoneKey]) -> list[dict[str, object]]:
    """The DNSKEY and DS of each key, as records in presentation form and as fields."""
    out: list[dict[str, object]] = []
    for k in keys:
        ds = ds_rdata(origin, k.dnskey, k.algorithm)
        owner = to_text(origin)
        public = base64.b64encode(k.dnskey[4:]).decode()
        out.append({
            "key_tag": k.tag, "algorithm": ALGORITHM_NAMES[k.algorithm], "flags": CSK_FLAGS,
            "created": k.created,
            "dnskey": f"{owner} IN DNSKEY {CSK_FLAGS} {PROTOCOL} {k.algorithm} {public}",
            "ds": f"{owner} IN DS {k.tag} {k.algorithm} {DIGEST_SHA256} {ds[4:].hex().upper()}",
        })
    return out


# -- the file ---------------------------------------------------------------------------------

def key_path(state_dir: str, origin: Name) -> str:
    stem = to_text(origin).rstrip(".") or "root"
    return os.path.join(state_dir, "dnssec", stem.replace("/", "_") + ".json")


def _dump(keys: list[ZoneKey], serial: int | None) -> str:
    rows = []
    for k in keys:
        pem = k.private.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()
        rows.append({"algorithm": k.algorithm, "created": k.created, "private_key": pem})
    body: dict[str, object] = {"keys": rows}
    if serial is not None:
        body["serial"] = serial
    return json.dumps(body, indent=1) + "\n"


def _load(text: str, path: str) -> tuple[list[ZoneKey], int | None]:
    try:
        body = json.loads(text)
        rows = body["keys"]
        serial = body.get("serial")
        if serial is not None and not isinstance(serial, int):
            raise ValueError("serial is not a number")
        keys = []
        for row in rows:
            private = serialization.load_pem_private_key(row["private_key"].encode(), None)
            if not isinstance(private, (ec.EllipticCurvePrivateKey,
                                        ed25519.Ed25519PrivateKey)):
                raise ValueError("not an ECDSA or Ed25519 key")
            keys.append(ZoneKey(private, int(row["algorithm"]), int(row["created"])))
    except (ValueError, KeyError, TypeError) as e:
        raise DnssecKeyError(f"{path}: unreadable DNSSEC key file ({e})") from None
    return keys, serial


def save(path: str, keys: list[ZoneKey], serial: int | None = None) -> None:
    """The keys and the last served serial (None: none yet)."""
    write_atomic(path, _dump(keys, serial))   # mkstemp creates the file 0600: never readable by others
    os.chmod(path, 0o600)


def load_or_create(state_dir: str, origin: Name, algorithm: int,
                   now: float | None = None) -> list[ZoneKey]:
    """The zone's keys from its file; a new key (saved first) when there is none or when
    none has the configured algorithm (an algorithm change starts over: the old DS must
    then be replaced at the parent)."""
    keys = load(state_dir, origin)
    if keys and all(k.algorithm == algorithm for k in keys):
        return keys
    keys = [generate(algorithm, time.time() if now is None else now)]
    save(key_path(state_dir, origin), keys, saved_serial(state_dir, origin))
    return keys


def load(state_dir: str, origin: Name) -> list[ZoneKey]:
    """The zone's keys from its file; none when there is no file yet."""
    return _read(state_dir, origin)[0]


def saved_serial(state_dir: str, origin: Name) -> int | None:
    """The last SOA serial served with the zone's keys; None when none was saved."""
    return _read(state_dir, origin)[1]


def _read(state_dir: str, origin: Name) -> tuple[list[ZoneKey], int | None]:
    path = key_path(state_dir, origin)
    try:
        with open(path, encoding="utf-8") as f:
            return _load(f.read(), path)
    except FileNotFoundError:
        return [], None


def rollover_step(keys: list[ZoneKey], now: float, lifetime_s: int, wait_s: int) -> str | None:
    """The step of a scheduled rollover due at `now`: "start" when the only key is
    `lifetime_s` old, "finish" when the new key of a rollover is `wait_s` old; None."""
    if len(keys) == 1 and now >= keys[0].created + lifetime_s:
        return "start"
    if len(keys) == 2 and now >= keys[1].created + wait_s:
        return "finish"
    return None


def roll(path: str, keys: list[ZoneKey], step: str, algorithm: int,
         now: float, serial: int | None = None) -> list[ZoneKey]:
    """One rollover step ("start" | "finish"), saved (with the last served `serial`) before it
    is returned (and used)."""
    if step == "start":
        new = start_rollover(keys, algorithm, now)
    elif step == "finish":
        new = finish_rollover(keys)
    else:
        raise DnssecKeyError(f'unknown rollover step {step!r} (steps: "start", "finish")')
    save(path, new, serial)
    return new


def start_rollover(keys: list[ZoneKey], algorithm: int, now: float) -> list[ZoneKey]:
    """Add a new key next to the current one (double signatures from now on)."""
    if len(keys) != 1:
        raise DnssecKeyError("a rollover is already in progress: finish it first")
    return keys + [generate(algorithm, now)]


def finish_rollover(keys: list[ZoneKey]) -> list[ZoneKey]:
    """Drop the older of the two keys (the first: keys are kept in the order made)."""
    if len(keys) != 2:
        raise DnssecKeyError("no rollover in progress: start one first")
    return keys[1:]
