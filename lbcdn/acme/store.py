"""ACME files under `<admin.state_dir>/acme/`: the account key per CA, each certificate's key
and chain, and the lock that lets one replica at a time issue a certificate.

Rules:
- Every file is written atomically (lbcdn.atomicfile: temp file, fsync, rename) with mode
  0600, in a directory of mode 0700: a crash leaves the old file or the new one.
- A certificate is a pair of generation files (`<id>-<gen>.key`, `<id>-<gen>.crt`) named by
  its record `<id>.json`, written last: the record switches to a new pair in one rename, so a
  reader never pairs a new chain with an old key. Older pairs are removed afterwards.
- `<id>.lock` is held (flock) by whoever issues `<id>`; replicas sharing the directory see it
  taken and wait for the record to change instead of asking the CA again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from lbcdn.atomicfile import write_atomic

_UNSAFE = re.compile(r"[^a-z0-9.-]")


def cert_id(directory: str, names: Sequence[str]) -> str:
    """A file-safe id for the certificate of `names` from the CA at `directory`."""
    digest = hashlib.sha256(("\n".join([directory, *sorted(names)])).encode()).hexdigest()
    return f"{_UNSAFE.sub('_', names[0].lower())}-{digest[:10]}"


@dataclass(frozen=True)
class Stored:
    """A stored certificate: its files and what the admin view shows of it."""
    cert_file: str
    key_file: str
    names: tuple[str, ...]
    issuer: str
    not_before: float
    not_after: float


def read_chain(cert_file: str) -> tuple[tuple[str, ...], str, float, float]:
    """(names, issuer, not_before, not_after) of a PEM chain's leaf."""
    with open(cert_file, "rb") as f:
        leaf = x509.load_pem_x509_certificate(f.read())
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return (names, leaf.issuer.rfc4514_string(), leaf.not_valid_before_utc.timestamp(),
            leaf.not_valid_after_utc.timestamp())


class AcmeStore:
    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, "acme")

    def _ensure(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _write(self, name: str, text: str) -> None:
        self._ensure()
        write_atomic(self._path(name), text, prefix=".acme-")  # mkstemp: mode 0600

    # -- account ---------------------------------------------------------------------------
    def account_key(self, directory: str, create: Callable[[], str]) -> str:
        """The PEM account key for the CA at `directory`; made with `create` the first time
        (under a lock, so replicas starting together share one account)."""
        name = "account-" + hashlib.sha256(directory.encode()).hexdigest()[:16]
        path = self._path(name + ".key")
        self._ensure()
        fd = os.open(self._path(name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(path, encoding="ascii") as f:
                    return f.read()
            except FileNotFoundError:
                pem = create()
                self._write(name + ".key", pem)
                return pem
        finally:
            os.close(fd)  # and the lock with it

    # -- certificates ----------------------------------------------------------------------
    def load(self, cid: str) -> Stored | None:
        """The stored certificate `cid`, or None (none yet, or unreadable: issue again)."""
        try:
            with open(self._path(cid + ".json"), encoding="utf-8") as f:
                record = json.load(f)
            cert_file = self._path(record["cert"])
            key_file = self._path(record["key"])
            names, issuer, nb, na = read_chain(cert_file)
            if not os.path.exists(key_file):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return Stored(cert_file, key_file, names, issuer, nb, na)

    def save(self, cid: str, chain_pem: str, key_pem: str, generation: str) -> Stored:
        """Store a new certificate; the record switches to it last. The old pair goes."""
        previous = self.load(cid)
        key_name, cert_name = f"{cid}-{generation}.key", f"{cid}-{generation}.crt"
        self._write(key_name, key_pem)
        self._write(cert_name, chain_pem)
        self._write(cid + ".json", json.dumps({"cert": cert_name, "key": key_name}))
        if previous is not None and previous.cert_file != self._path(cert_name):
            for old in (previous.cert_file, previous.key_file):
                try:
                    os.unlink(old)
                except OSError:
                    pass
        stored = self.load(cid)
        assert stored is not None
        return stored

    def try_lock(self, cid: str) -> IssueLock | None:
        """The issuing lock of `cid`, or None when another process holds it."""
        self._ensure()
        fd = os.open(self._path(cid + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return IssueLock(fd)


class IssueLock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
