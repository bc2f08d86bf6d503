"""The disk tier: stored responses as files that survive a restart, bounded in bytes, LRU.

File format (one file per variant, header and body together):
    b"LBCD1\\n"  u32 flags  u32 meta_len  u64 body_len  meta (JSON)  body  sha256(meta + body)
- The sha256 covers meta and body, so a torn or truncated write, or a flipped bit, is detected
  on read; such a file is deleted and never served. `flags` sits outside the checksum at a
  fixed offset so a soft purge is one 4-byte write instead of a rewrite.
- Writes are atomic: a temp file in `tmp/`, fsync, rename into place, fsync of the directory.
  Leftover temp files (a crash mid-write) are removed at start.
- Names: sha256(primary key NUL variant key) in hex, under a two-hex-digit fan-out directory.
  A primary whose responses have a Vary also has a `.vary` file named for its variant b""
  (a name no Vary response takes) listing the Vary names, so a reader that has no index
  (lbcdn.cache.shared, the workers' shared store) finds any entry from names alone.
- The index (primary -> Vary names and variants, sizes, invalidation data) lives in memory and
  is rebuilt at start from the files' meta sections (bodies are not read then); LRU order
  starts from the files' mtimes, and a hit touches the file so the order survives restarts.

Everything here blocks: the data plane calls it through a thread (`asyncio.to_thread`), so the
index is guarded by a lock. It holds no clock and makes no policy decision.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lbcdn.cache.directives import Headers
from lbcdn.cache.entry import CachedResponse
from lbcdn.cache.key import variant_key
from lbcdn.cache.policy import F_PURGED

MAGIC = b"LBCD1\n"
_HEAD = struct.Struct(">IIQ")         # flags, meta_len, body_len
FLAGS_OFFSET = len(MAGIC)
PREFIX = len(MAGIC) + _HEAD.size
DIGEST = 32
SUFFIX = ".lbc"
VARY_SUFFIX = ".vary"


class CorruptFile(ValueError):
    pass


def _s(b: bytes) -> str:
    return b.decode("latin-1")


def _b(s: str) -> bytes:
    return s.encode("latin-1")


def encode(entry: CachedResponse) -> bytes:
    """An entry as one file's bytes."""
    meta = {
        "key": _s(entry.key), "variant": _s(entry.variant), "vary": [_s(v) for v in entry.vary],
        "host": _s(entry.host), "path": _s(entry.path), "query": _s(entry.query),
        "status": entry.status, "headers": [[_s(n), _s(v)] for n, v in entry.headers],
        "head": _s(entry.head), "request_time": entry.request_time,
        "response_time": entry.response_time, "date": entry.date,
        "initial_age": entry.initial_age, "lifetime": entry.lifetime,
        "lifetime_source": entry.lifetime_source, "swr_s": entry.swr_s, "sie_s": entry.sie_s,
        "etag": _s(entry.etag) if entry.etag is not None else None,
        "last_modified": entry.last_modified,
        "last_modified_raw": (_s(entry.last_modified_raw)
                              if entry.last_modified_raw is not None else None),
        "tags": sorted(_s(t) for t in entry.tags), "stored_at": entry.stored_at,
    }
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    digest = hashlib.sha256(meta_bytes)
    for chunk in entry.chunks:
        digest.update(chunk)
    return b"".join([MAGIC, _HEAD.pack(entry.flags, len(meta_bytes), entry.size), meta_bytes,
                     *entry.chunks, digest.digest()])


def _read_prefix(data: bytes, file_size: int) -> tuple[int, int, int]:
    if len(data) < PREFIX or data[:len(MAGIC)] != MAGIC:
        raise CorruptFile("bad magic")
    flags, meta_len, body_len = _HEAD.unpack_from(data, len(MAGIC))
    if PREFIX + meta_len + body_len + DIGEST != file_size:
        raise CorruptFile("length mismatch (torn write?)")
    return flags, meta_len, body_len


def _meta(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CorruptFile(f"bad meta: {e}") from None
    if not isinstance(meta, dict):
        raise CorruptFile("bad meta")
    return meta


def decode(data: bytes) -> CachedResponse:
    """One file's bytes -> the entry; CorruptFile when anything does not add up."""
    flags, meta_len, body_len = _read_prefix(data, len(data))
    meta_raw = data[PREFIX:PREFIX + meta_len]
    body = data[PREFIX + meta_len:PREFIX + meta_len + body_len]
    if hashlib.sha256(meta_raw + body).digest() != data[-DIGEST:]:
        raise CorruptFile("checksum mismatch")
    m = _meta(meta_raw)
    try:
        return CachedResponse(
            key=_b(m["key"]), variant=_b(m["variant"]), vary=tuple(_b(v) for v in m["vary"]),
            host=_b(m["host"]), path=_b(m["path"]), query=_b(m["query"]), status=m["status"],
            headers=tuple((_b(n), _b(v)) for n, v in m["headers"]), head=_b(m["head"]),
            chunks=(body,), size=body_len, request_time=m["request_time"],
            response_time=m["response_time"], date=m["date"], initial_age=m["initial_age"],
            lifetime=m["lifetime"], lifetime_source=m["lifetime_source"], flags=flags,
            swr_s=m["swr_s"], sie_s=m["sie_s"],
            etag=_b(m["etag"]) if m["etag"] is not None else None,
            last_modified=m["last_modified"],
            last_modified_raw=(_b(m["last_modified_raw"])
                               if m["last_modified_raw"] is not None else None),
            tags=frozenset(_b(t) for t in m["tags"]), stored_at=m["stored_at"])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFile(f"bad meta: {e}") from None


def file_name(primary: bytes, variant: bytes) -> str:
    return hashlib.sha256(primary + b"\x00" + variant).hexdigest()


def path_of(root: str, name: str, suffix: str = SUFFIX) -> str:
    return os.path.join(root, name[:2], name + suffix)


Move = tuple[str, str]   # (temp file, final path)


def _write_temp(root: str, name: str, data: bytes, fsync: bool, suffix: str) -> Move:
    tmp = os.path.join(root, "tmp", f"{name}{suffix}.{os.getpid()}.{threading.get_ident()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return tmp, path_of(root, name, suffix)


def prepare_entry(root: str, entry: CachedResponse, data: bytes, fsync: bool) -> list[Move]:
    """An encoded entry (and its primary's Vary names when it has a Vary) written to temp
    files, to be put in place by `place`: a reader sees the old file or the new one, never a
    part; a crash leaves only temp files (removed at the next start)."""
    moves = []
    if entry.vary:
        moves.append(_write_temp(root, file_name(entry.key, b""),
                                 json.dumps([_s(v) for v in entry.vary]).encode(), fsync,
                                 VARY_SUFFIX))
    moves.append(_write_temp(root, file_name(entry.key, entry.variant), data, fsync, SUFFIX))
    return moves


def place(moves: list[Move], fsync: bool) -> None:
    for tmp, final in moves:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(tmp, final)
        if fsync:
            _fsync_dir(os.path.dirname(final))


def write_entry(root: str, entry: CachedResponse, data: bytes, fsync: bool) -> str:
    """Write an encoded entry in place (prepare_entry, place); its name."""
    place(prepare_entry(root, entry, data, fsync), fsync)
    return file_name(entry.key, entry.variant)


def read_vary(root: str, primary: bytes) -> tuple[bytes, ...] | None:
    """The Vary names of `primary`'s stored responses; None when it has no `.vary` file."""
    try:
        with open(path_of(root, file_name(primary, b""), VARY_SUFFIX), "rb") as f:
            names = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return tuple(_b(n) for n in names)


@dataclass(slots=True)
class _Indexed:
    primary: bytes
    variant: bytes
    vary: tuple[bytes, ...]
    host: bytes
    path: bytes
    query: bytes
    tags: frozenset[bytes]
    size: int           # file bytes
    ino: int            # the file's inode: a file renamed over it since is another one


class DiskStore:
    def __init__(self, root: str, max_bytes: int, max_object_bytes: int,
                 fsync: bool = True) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self.fsync = fsync
        self.bytes = 0
        self.evictions = 0
        self.corrupt = 0
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, _Indexed] = OrderedDict()
        self._primaries: dict[bytes, tuple[tuple[bytes, ...], dict[bytes, str]]] = {}
        os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
        self._load()

    def __len__(self) -> int:
        return len(self._lru)

    def _path(self, name: str) -> str:
        return path_of(self.root, name)

    # -- start -----------------------------------------------------------------------------

    def _load(self) -> None:
        tmp = os.path.join(self.root, "tmp")
        for leftover in os.listdir(tmp):
            _unlink(os.path.join(tmp, leftover))
        found: list[tuple[float, str, _Indexed]] = []
        vary_files: list[str] = []
        for sub in os.listdir(self.root):
            d = os.path.join(self.root, sub)
            if sub == "tmp" or len(sub) != 2 or not os.path.isdir(d):
                continue
            for fname in os.listdir(d):
                if fname.endswith(VARY_SUFFIX):
                    vary_files.append(fname[:-len(VARY_SUFFIX)])
                if not fname.endswith(SUFFIX):
                    continue
                path = os.path.join(d, fname)
                try:
                    item, mtime = self._index_file(path)
                except (OSError, CorruptFile):
                    self.corrupt += 1
                    _unlink(path)
                    continue
                name = fname[:-len(SUFFIX)]
                if file_name(item.primary, item.variant) != name:
                    self.corrupt += 1
                    _unlink(path)
                    continue
                found.append((mtime, name, item))
        for _, name, item in sorted(found, key=lambda t: t[0]):
            self._add(name, item)
        varied = {file_name(p, b"") for p, (vary, _) in self._primaries.items() if vary}
        for name in vary_files:
            if name not in varied:
                _unlink(path_of(self.root, name, VARY_SUFFIX))
        self._evict()

    def _index_file(self, path: str) -> tuple[_Indexed, float]:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            prefix = f.read(PREFIX)
            _, meta_len, _ = _read_prefix(prefix, st.st_size)
            m = _meta(f.read(meta_len))
        try:
            item = _Indexed(_b(m["key"]), _b(m["variant"]), tuple(_b(v) for v in m["vary"]),
                            _b(m["host"]), _b(m["path"]), _b(m["query"]),
                            frozenset(_b(t) for t in m["tags"]), st.st_size, st.st_ino)
        except (KeyError, TypeError) as e:
            raise CorruptFile(str(e)) from None
        return item, st.st_mtime

    # -- index -----------------------------------------------------------------------------

    def _add(self, name: str, item: _Indexed) -> None:
        vary, variants = self._primaries.get(item.primary, (item.vary, {}))
        if vary != item.vary:
            del self._primaries[item.primary]  # so removing them keeps the new `.vary` file
            for old in list(variants.values()):
                self._remove(old)
            variants = {}
        variants[item.variant] = name
        self._primaries[item.primary] = (item.vary, variants)
        self._lru[name] = item
        self.bytes += item.size

    def _remove(self, name: str, evicting: bool = False) -> None:
        item = self._lru.pop(name, None)
        if item is None:
            return
        self.bytes -= item.size
        # Evicting: a worker (lbcdn.cache.shared) may have just written a new response under
        # this name, not adopted yet; that file is not the one evicted and stays.
        keep = evicting and _inode(self._path(name)) not in (item.ino, None)
        entry = self._primaries.get(item.primary)
        if entry is not None:
            entry[1].pop(item.variant, None)
            if not entry[1]:
                del self._primaries[item.primary]
                if item.vary and not keep:
                    _unlink(path_of(self.root, file_name(item.primary, b""), VARY_SUFFIX))
        if not keep:
            _unlink(self._path(name))

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._lru:
            name = next(iter(self._lru))
            self._remove(name, evicting=True)
            self.evictions += 1

    # -- public ----------------------------------------------------------------------------

    def put(self, entry: CachedResponse) -> bool:
        """Write an entry (replacing its variant); False when it is too large."""
        data = encode(entry)
        if len(data) > min(self.max_object_bytes, self.max_bytes):
            return False
        moves = prepare_entry(self.root, entry, data, self.fsync)
        name = file_name(entry.key, entry.variant)
        with self._lock:  # renamed and indexed in one step: the index says what is on disk
            place(moves, self.fsync)
            self._index(name, _Indexed(entry.key, entry.variant, entry.vary, entry.host,
                                       entry.path, entry.query, entry.tags, len(data),
                                       os.stat(moves[-1][1]).st_ino))
        return True

    def adopt(self, name: str) -> bool:
        """Index (and count against the budget, evicting for it) a file another process
        wrote (write_entry); False when it is gone or damaged (then removed)."""
        path = self._path(name)
        try:
            item, _ = self._index_file(path)
        except FileNotFoundError:
            return False
        except (OSError, CorruptFile):
            self.corrupt += 1
            _unlink(path)
            return False
        with self._lock:
            self._index(name, item)
        return True

    def _index(self, name: str, item: _Indexed) -> None:
        old = self._lru.pop(name, None)
        if old is not None:
            self.bytes -= old.size
        self._add(name, item)
        self._evict()

    def lookup(self, primary: bytes, headers: Headers) -> CachedResponse | None:
        with self._lock:
            found = self._primaries.get(primary)
            if found is None:
                return None
            vary, variants = found
            variant = variant_key(vary, headers) if vary else b""
            if variant is None:
                return None
            name = variants.get(variant)
            if name is None:
                return None
            self._lru.move_to_end(name)
        return self._read(name)

    def _read(self, name: str) -> CachedResponse | None:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                data = f.read()
            entry = decode(data)
            os.utime(path)
            return entry
        except FileNotFoundError:
            with self._lock:
                self._forget(name)
            return None
        except (OSError, CorruptFile):
            with self._lock:
                self.corrupt += 1
                self._remove(name)
            return None

    def _forget(self, name: str) -> None:
        item = self._lru.get(name)
        if item is not None:
            self._remove(name)

    def delete(self, primary: bytes) -> int:
        with self._lock:
            found = self._primaries.get(primary)
            names = list(found[1].values()) if found else []
            for name in names:
                self._remove(name)
            return len(names)

    def _purge(self, names: Iterable[str], soft: bool) -> int:
        n = 0
        for name in list(names):
            if soft:
                n += self._mark_purged(name)
            else:
                self._remove(name)
                n += 1
        return n

    def _mark_purged(self, name: str) -> int:
        path = self._path(name)
        try:
            with open(path, "r+b") as f:
                flags = struct.unpack(">I", os.pread(f.fileno(), 4, FLAGS_OFFSET))[0]
                os.pwrite(f.fileno(), struct.pack(">I", flags | F_PURGED), FLAGS_OFFSET)
                if self.fsync:
                    os.fsync(f.fileno())
            return 1
        except OSError:
            self._remove(name)
            return 0

    def purge_uri(self, host: bytes, path: bytes, soft: bool = False) -> int:
        return self.purge_matching(lambda h, p, q: h == host and p == path, soft)

    def purge_matching(self, match: Callable[[bytes, bytes, bytes], bool],
                       soft: bool = False) -> int:
        with self._lock:
            names = [n for n, i in self._lru.items() if match(i.host, i.path, i.query)]
            return self._purge(names, soft)

    def purge_tags(self, tags: Iterable[bytes], soft: bool = False) -> int:
        wanted = frozenset(tags)
        with self._lock:
            names = [n for n, i in self._lru.items() if i.tags & wanted]
            return self._purge(names, soft)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
