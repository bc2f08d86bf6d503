"""TLS session-ticket keys shared by every worker of a daemon, rotated, kept in memory only.

Why: OpenSSL gives each SSL_CTX its own random ticket keys. With `--workers N` every worker
process has its own, and SO_REUSEPORT sends a returning client to any worker: only the one that
issued its ticket could decrypt it, so about (N-1)/N of resumptions became full handshakes.
TLS 1.2 tickets and TLS 1.3 stateless PSK tickets use the same keys.

Rules:
- One key ring per daemon: the control process (or the single process) makes it and rotates it
  every `tls_session_tickets.rotate_every_s`; workers get it over the control channel, on start
  and on every rotation. It never touches the disk: a restart starts with new keys (clients then
  do one full handshake), a reload keeps them.
- The ring holds three keys: `previous`, `current` (new tickets) and `next`. All three decrypt.
  `next` is handed out one period ahead, so a worker that rotated a moment before another one
  issues tickets the other already accepts; a ticket under `previous` is accepted and renewed.
  A ticket is therefore good for at least one period (if the session timeout allows).
- Mechanism: CPython's ssl module has no API for ticket keys, so OpenSSL's ticket-key callback
  (SSL_CTX_set_tlsext_ticket_key_evp_cb, OpenSSL 3) is installed with ctypes, on the very
  libssl/libcrypto the `_ssl` module is linked with (resolved through its handle). The SSL_CTX*
  of an ssl.SSLContext is the first field after the object header of CPython's PySSLContext
  (unchanged since the type exists); it is read, then proven: the context's options, as
  OpenSSL reports them for that pointer, must follow a change made through Python. Other ways
  were weighed: pyOpenSSL/cryptography contexts cannot be given to asyncio/uvloop and carry
  their own OpenSSL copy; a compiled helper would need the same struct knowledge plus a build
  step. When anything is missing (an older OpenSSL, another Python) a warning is logged once and
  each process keeps OpenSSL's own keys: resumption then works only on the worker that issued
  the ticket (`mechanism()` says which is in use).
"""

from __future__ import annotations

import _ssl
import asyncio
import ctypes
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from lbcdn.configkit.fields import doc
from lbcdn.tasks import spawn

log = logging.getLogger("lbcdn.tls")

NAME_BYTES = 16   # OpenSSL's key-name field, sent in clear in the ticket
SECRET_BYTES = 32  # HMAC-SHA256 key, then AES-256-CBC key
KEY_BYTES = NAME_BYTES + 2 * SECRET_BYTES


@dataclass(frozen=True)
class TicketsConfig:
    """Session tickets (TLS resumption) shared by all workers; keys in memory only."""
    rotate_every_s: float = doc(
        "How often the ticket key changes; a ticket stays good for at least this long "
        "(bounded by the TLS session timeout), the previous key is still accepted.",
        43200.0, lo=1)


@dataclass(frozen=True)
class TicketKeys:
    """The ring: 80-byte keys (name, HMAC secret, AES secret)."""
    previous: bytes
    current: bytes
    next: bytes

    @staticmethod
    def fresh() -> TicketKeys:
        return TicketKeys(os.urandom(KEY_BYTES), os.urandom(KEY_BYTES), os.urandom(KEY_BYTES))

    def rotated(self, new: bytes) -> TicketKeys:
        """One period on: `next` issues tickets, `current` is still accepted, `new` is next."""
        return TicketKeys(self.current, self.next, new)

    def to_wire(self) -> list[str]:
        return [k.hex() for k in (self.previous, self.current, self.next)]

    @staticmethod
    def from_wire(keys: list[str]) -> TicketKeys:
        raw = [bytes.fromhex(k) for k in keys]
        if len(raw) != 3 or any(len(k) != KEY_BYTES for k in raw):
            raise ValueError("ticket keys: three keys of 80 bytes expected")
        return TicketKeys(raw[0], raw[1], raw[2])


# -- OpenSSL, through ctypes ----------------------------------------------------------------
_TICKET_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_OSSL_PARAM_UTF8_STRING = 4
_TLS13 = 0x0304


class _OsslParam(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint),
                ("data", ctypes.c_void_p), ("data_size", ctypes.c_size_t),
                ("return_size", ctypes.c_size_t)]


class _Slot:
    """One key of the ring as OpenSSL takes it: C buffers made once, not per handshake."""

    def __init__(self, key: bytes, renew: bool) -> None:
        self.name = key[:NAME_BYTES]
        self.hmac = ctypes.create_string_buffer(key[NAME_BYTES:NAME_BYTES + SECRET_BYTES],
                                                SECRET_BYTES)
        self.aes = ctypes.create_string_buffer(key[NAME_BYTES + SECRET_BYTES:], SECRET_BYTES)
        self.renew = renew


class _OpenSsl:
    """The libssl/libcrypto functions the callback needs, from the `_ssl` module's own."""

    def __init__(self) -> None:
        path = getattr(_ssl, "__file__", None)
        lib = ctypes.CDLL(path) if path else ctypes.CDLL(None)  # else: built into python
        self.set_cb = lib.SSL_CTX_set_tlsext_ticket_key_evp_cb  # AttributeError: not OpenSSL 3
        self.set_cb.argtypes = [ctypes.c_void_p, _TICKET_CB]
        self.set_cb.restype = ctypes.c_int
        self.version = lib.SSL_version
        self.version.argtypes = [ctypes.c_void_p]
        self.version.restype = ctypes.c_int
        self.get_options = lib.SSL_CTX_get_options
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.rand_bytes = lib.RAND_bytes
        self.rand_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.encrypt_init = lib.EVP_EncryptInit_ex
        self.decrypt_init = lib.EVP_DecryptInit_ex
        for f in (self.encrypt_init, self.decrypt_init):
            f.argtypes = [ctypes.c_void_p] * 5
            f.restype = ctypes.c_int
        self.mac_init = lib.EVP_MAC_init
        self.mac_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                  ctypes.c_void_p]
        self.mac_init.restype = ctypes.c_int
        # fetched once: EVP_aes_256_cbc() would make every EVP_*Init_ex look it up by name
        fetch = lib.EVP_CIPHER_fetch
        fetch.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        fetch.restype = ctypes.c_void_p
        cipher = fetch(None, b"AES-256-CBC", None)
        if not cipher:
            raise ValueError("OpenSSL has no AES-256-CBC")
        self.cipher: int = cipher
        self.digest = ctypes.create_string_buffer(b"SHA256")
        self.params = (_OsslParam * 2)(
            _OsslParam(b"digest", _OSSL_PARAM_UTF8_STRING,
                       ctypes.cast(self.digest, ctypes.c_void_p), 6, ctypes.c_size_t(-1).value),
            _OsslParam(None, 0, None, 0, 0))

    def ctx_pointer(self, context: ssl.SSLContext) -> int:
        """The SSL_CTX* of `context`, proven to be it (see the module's doc), or ValueError."""
        raw = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if not raw:
            raise ValueError("no SSL_CTX where PySSLContext keeps it")
        before = context.options
        flipped = before ^ ssl.OP_NO_RENEGOTIATION
        try:
            seen = self.get_options(raw)
            context.options = flipped
            seen_flipped = self.get_options(raw)
        finally:
            context.options = before
        if seen != int(before) or seen_flipped != int(flipped):
            raise ValueError("the pointer read is not this context's SSL_CTX")
        return raw


class _Keyring:
    """The process's ring, and the callback OpenSSL calls for every ticket."""

    def __init__(self) -> None:
        self.current: _Slot
        self.by_name: dict[bytes, _Slot]
        self.openssl: _OpenSsl | None = None
        self.failed: str | None = None   # why the shared keys are not in use
        self.callback = _TICKET_CB(self._ticket)  # kept alive: OpenSSL holds the pointer
        self.set(TicketKeys.fresh())

    def set(self, keys: TicketKeys) -> None:
        current = _Slot(keys.current, False)
        self.by_name = {current.name: current,
                        keys.next[:NAME_BYTES]: _Slot(keys.next, False),
                        keys.previous[:NAME_BYTES]: _Slot(keys.previous, True)}
        self.current = current

    def install(self, context: ssl.SSLContext) -> None:
        if self.failed is not None:
            return
        try:
            if self.openssl is None:
                self.openssl = _OpenSsl()
            ptr = self.openssl.ctx_pointer(context)
            if self.openssl.set_cb(ptr, self.callback) != 1:
                raise ValueError("SSL_CTX_set_tlsext_ticket_key_evp_cb failed")
        except (OSError, AttributeError, ValueError) as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("TLS session tickets: shared ticket keys unavailable (%s); each "
                        "process keeps its own, so a client resumes only on the worker that "
                        "issued its ticket", self.failed)

    def _ticket(self, ssl_ptr: int | None, key_name: int | None, iv: int | None,
                cipher_ctx: int | None, mac_ctx: int | None, enc: int) -> int:
        openssl = self.openssl
        assert openssl is not None and key_name and iv
        if enc:
            slot = self.current
            ctypes.memmove(key_name, slot.name, NAME_BYTES)
            if openssl.rand_bytes(iv, 16) != 1:
                return -1
            init = openssl.encrypt_init
        else:
            found = self.by_name.get(ctypes.string_at(key_name, NAME_BYTES))
            if found is None:
                return 0  # not ours (any more): a full handshake
            slot = found
            init = openssl.decrypt_init
        if (init(cipher_ctx, openssl.cipher, None, slot.aes, iv) != 1
                or openssl.mac_init(mac_ctx, slot.hmac, SECRET_BYTES, openssl.params) != 1):
            return -1
        if enc:
            return 1
        # 2: accepted, and a new ticket goes out. Always in TLS 1.3: there a resumption gets a
        # new ticket only when asked for, and clients that keep one session per connection
        # slot (wrk, SSL_clear) would resume only every other time without it.
        return 2 if slot.renew or openssl.version(ssl_ptr) == _TLS13 else 1


_RING = _Keyring()


def install(context: ssl.SSLContext) -> None:
    """Make `context` issue and accept tickets under the process's shared keys (or, when that
    cannot be done, log why once and leave it with OpenSSL's own)."""
    _RING.install(context)


def set_keys(keys: TicketKeys) -> None:
    """The daemon's keys, from the control process (or the single process's rotator)."""
    _RING.set(keys)


def mechanism() -> str:
    """`shared` (the keys of the ring) or `per-process: WHY`."""
    return "shared" if _RING.failed is None else f"per-process: {_RING.failed}"


class Rotator:
    """Holds the daemon's ring and rotates it every `rotate_every_s`; `publish` gets the ring
    at start and after every rotation."""

    def __init__(self, config: TicketsConfig, publish: Callable[[TicketKeys], None]) -> None:
        self.config = config
        self.keys = TicketKeys.fresh()
        self.publish = publish
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.publish(self.keys)
        self._task = spawn(self._run(), "ticket-keys")

    def apply(self, config: TicketsConfig) -> None:
        """A reload: the same keys, the new period from now."""
        if config != self.config:
            self.config = config
            self.stop()
            self._task = spawn(self._run(), "ticket-keys")

    def rotate(self) -> None:
        self.keys = self.keys.rotated(os.urandom(KEY_BYTES))
        self.publish(self.keys)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.rotate_every_s)
            self.rotate()
