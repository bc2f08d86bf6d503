"""Sending a stored object: its response headers and its bytes (sendfile for large bodies).

Shared by GetObject/HeadObject (s3api) and the website endpoint; both decide status, range and
preconditions first (httpsem), then call `send_file`. The data file is opened before the head
is sent and checked against the stat the headers were built from, so a concurrent overwrite
never mixes one version's headers with another's bytes.
"""

from __future__ import annotations

import os

from aiohttp import web

from lbcdn.bucket.checksums import is_checksum_header
from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.httpsem import ByteRange, http_date, metadata_value
from lbcdn.bucket.sendfile import sendfile
from lbcdn.bucket.storage import ObjectInfo

# Below this a pread + write costs less than the sendfile set-up.
SMALL_BODY = 128 * 1024


def object_headers(info: ObjectInfo) -> dict[str, str]:
    headers = {
        "ETag": f'"{info.etag}"',
        "Last-Modified": http_date(info.last_modified),
        "Content-Type": info.content_type,
        "Accept-Ranges": "bytes",
    }
    for name, value in info.headers.items():
        if name == "content-type" or is_checksum_header(name):
            continue  # the checksum only when asked for (checksums.py)
        headers[_canonical(name)] = metadata_value(value) if name.startswith(
            "x-amz-meta-") else value
    return headers


def _canonical(name: str) -> str:
    if name.startswith("x-amz-"):
        return name
    return "-".join(p.capitalize() for p in name.split("-"))


def open_checked(info: ObjectInfo) -> int:
    """Open the data file and make sure it is the version `info` describes."""
    try:
        fd = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise S3Error("NoSuchKey", extra={"Key": info.key}) from None
    st = os.fstat(fd)
    if st.st_size != info.size or st.st_mtime_ns != info.mtime_ns:
        os.close(fd)
        raise _Changed()
    return fd


class _Changed(Exception):
    """The file changed between stat and open; the caller looks it up again."""


Changed = _Changed


async def send_file(request: web.Request, fd: int, info: ObjectInfo, status: int,
                    headers: dict[str, str], rng: ByteRange | None,
                    head_only: bool, stall_timeout_s: float) -> web.StreamResponse:
    """Send the head and (unless HEAD) the selected bytes of `fd`; closes `fd`. A client
    that reads nothing for `stall_timeout_s` is cut off (its idle timeout)."""
    try:
        offset, length = (rng.start, rng.length) if rng else (0, info.size)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length
        if rng is not None:
            resp.headers["Content-Range"] = rng.content_range(info.size)
        await resp.prepare(request)
        if head_only or length == 0:
            await resp.write_eof()
            return resp
        if length <= SMALL_BODY:
            await resp.write(os.pread(fd, length, offset))
        else:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client went away")
            await sendfile(transport, fd, offset, length, stall_timeout_s)
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)
