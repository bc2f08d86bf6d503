"""The S3 REST API (aiohttp handler): path-style and virtual-host-style requests.

Flow of one request: request id -> bucket/key from Host and the raw path (keys.py) -> SigV4
(runtime.authenticate) -> operation chosen by method and sub-resource -> permission
(access.py) -> storage work in a thread -> XML or object response. Every failure is an
S3Error rendered once, in `handle`, as S3's XML error with the request id (no body for HEAD).

Rules: bodies are read only through the verifying body reader, and an object is committed only
after the reader finished without error (a failed, aborted or disconnected upload leaves the
previous version untouched). Keys are decoded once from the raw path, never from aiohttp's
normalized one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

from aiohttp import HttpVersion11, web
from multidict import CIMultiDict

from lbcdn.bucket import publicaccess, xmlio
from lbcdn.bucket.access import Action, User
from lbcdn.bucket.bucketpolicy import parse_policy
from lbcdn.bucket.checksums import (ALGORITHM_HEADER, TYPE_HEADER, checksum_headers,
                                    claimed_checksums, object_checksum, part_checksum,
                                    upload_checksum)
from lbcdn.bucket.errors import S3Error, render_error
from lbcdn.bucket.payload import CHECKSUM_HEADER_PREFIX
from lbcdn.bucket.httpsem import (ByteRange, Unsatisfiable, WriteCondition,
                                  evaluate_preconditions, http_date, if_range_allows,
                                  metadata_text,
                                  parse_copy_range, parse_range, part_range, write_condition)
from lbcdn.bucket.lifecycle import parse_tagging, tags_from_header
from lbcdn.bucket.keys import check_key, check_text, decode_key, decode_path, split_path
from lbcdn.bucket.publicaccess import ALL_BLOCKED, PRIVATE, PUBLIC_READ, BucketAccess
from lbcdn.bucket.runtime import BucketRuntime, object_identity
from lbcdn.bucket.serve import Changed, object_headers, open_checked, send_file
from lbcdn.bucket.storage import STORED_HEADERS, ObjectInfo, PendingWrite, new_request_id
from lbcdn.bucket.websiteconf import parse_website_xml, render_website_xml

log = logging.getLogger("lbcdn.bucket.s3api")

MAX_XML_BODY = 2 << 20
_RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
_COPY_CONDITIONS = {
    "x-amz-copy-source-if-match": "If-Match",
    "x-amz-copy-source-if-none-match": "If-None-Match",
    "x-amz-copy-source-if-modified-since": "If-Modified-Since",
    "x-amz-copy-source-if-unmodified-since": "If-Unmodified-Since",
}
_UNSUPPORTED_SUBRESOURCES = ("cors", "replication",
                             "encryption", "logging", "notification", "object-lock",
                             "legal-hold", "retention", "torrent", "restore", "select",
                             "analytics", "inventory", "metrics", "accelerate",
                             "requestPayment", "ownershipControls", "intelligent-tiering")

# Sub-resources of a bucket stored by the access store (bucket policy, ACL, Block Public Access).
_ACCESS_SUBRESOURCES = ("policy", "policyStatus", "acl", "publicAccessBlock")


def parse_query(raw: str) -> list[tuple[str, str]]:
    """Decoded query pairs, `+` kept literal (as SigV4 wants)."""
    pairs = []
    for part in raw.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name, errors="surrogateescape"),
                          unquote(value, errors="surrogateescape")))
    return pairs


class Req:
    """What the handlers need to know about one request, parsed once."""

    def __init__(self, request: web.Request, request_id: str) -> None:
        self.request = request
        self.request_id = request_id
        self.method = request.method
        raw = request.raw_path
        self.raw_path, _, self.raw_query = raw.partition("?")
        self.query_list = parse_query(self.raw_query)
        self.query: dict[str, str] = dict(self.query_list)
        self.headers = request.headers
        self.bucket = ""
        self.raw_key = ""
        self.key = ""
        self.auth: Any = None
        self.user: User | None = None
        # `Expect: 100-continue`: the interim answer waits until the request passed its checks
        # (`S3Api._continue`), as on S3, so a refused upload is never sent.
        self.expects_continue = (request.version == HttpVersion11 and request.headers.get(
            "Expect", "").lower() == "100-continue")
        self.continued = False

    @property
    def resource(self) -> str:
        return f"/{self.bucket}/{self.key}" if self.key else (
            f"/{self.bucket}" if self.bucket else "/")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")


def _unb64(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      extra={"ArgumentName": "continuation-token"}) from None


def _int_param(q: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = q.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer "
                      "range", extra={"ArgumentName": name, "ArgumentValue": text}) from None
    if value < lo:
        raise S3Error("InvalidArgument", f"Argument {name} must be an integer between "
                      f"{lo} and {hi}", extra={"ArgumentName": name, "ArgumentValue": text})
    return min(value, hi)


def write_condition_of(headers: Mapping[str, str]) -> WriteCondition | None:
    """If-Match / If-None-Match of a PutObject or CompleteMultipartUpload."""
    try:
        return write_condition(headers)
    except ValueError:
        raise S3Error("NotImplemented", "If-None-Match on a write supports only `*`.",
                      extra={"Header": "If-None-Match"}) from None


def stored_headers_from(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers S3 keeps with an object, lower-case, from a PUT / CreateMultipartUpload."""
    out: dict[str, str] = {}
    for name in STORED_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        if name == "content-encoding" and "aws-chunked" in value.lower():
            # aws-chunked is the transfer framing, not part of the object; any other value
            # is kept byte for byte.
            value = ",".join(v.strip() for v in value.split(",")
                             if v.strip().lower() != "aws-chunked")
            if not value:
                continue
        out[name] = value
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith("x-amz-meta-"):
            out[lname] = metadata_text(value)
    return out


class S3Api:
    """aiohttp handler for the S3 REST API over a BucketRuntime."""

    def __init__(self, runtime: BucketRuntime) -> None:
        self.rt = runtime
        self.storage = runtime.storage

    async def handle(self, request: web.Request) -> web.StreamResponse:
        req = Req(request, new_request_id())
        try:
            resp = await self._dispatch(req)
        except S3Error as e:
            resp = self.error_response(req, e)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("S3 request failed: %s %s", req.method, req.raw_path)
            resp = self.error_response(req, S3Error("InternalError"))
        if not resp.prepared:
            resp.headers["x-amz-request-id"] = req.request_id
            resp.headers["x-amz-id-2"] = req.request_id
            if req.expects_continue and not req.continued:
                # The client holds its body back; one sent anyway after its wait must not be
                # read as the next request.
                resp.force_close()
        return resp

    def error_response(self, req: Req, err: S3Error) -> web.Response:
        err.with_resource(req.resource)
        headers = {"x-amz-request-id": req.request_id, "x-amz-id-2": req.request_id,
                   **err.headers}
        if err.code == "InvalidRange" and "ActualObjectSize" in err.extra:
            headers["Content-Range"] = f"bytes */{err.extra['ActualObjectSize']}"
        if err.status == 304 or req.method == "HEAD":
            return web.Response(status=err.status, headers=headers)
        return web.Response(status=err.status, body=render_error(err, req.request_id),
                            content_type="application/xml", headers=headers)

    # -- routing ----------------------------------------------------------------------------

    async def _dispatch(self, req: Req) -> web.StreamResponse:
        host = req.headers.get("Host", "")
        vbucket = self.rt.virtual_bucket(host)
        if vbucket is not None:
            req.bucket, req.raw_key = vbucket, req.raw_path.lstrip("/")
        else:
            req.bucket, req.raw_key = split_path(req.raw_path)
            req.bucket = decode_path(req.bucket)
        req.auth = self.rt.authenticate(req.method, req.raw_path, req.query_list, req.headers,
                                        self.rt.now())
        req.user = self.rt.user_for(req.auth)
        q = req.query
        for sub in _UNSUPPORTED_SUBRESOURCES:
            if sub in q:
                raise S3Error("NotImplemented", f"The {sub} sub-resource is not implemented.")
        if not req.bucket:
            if req.method == "GET":
                return await self.list_buckets(req)
            raise S3Error("MethodNotAllowed")
        if not req.raw_key:
            return await self._bucket_op(req)
        req.key = decode_key(req.raw_key)
        return await self._object_op(req)

    async def _bucket_op(self, req: Req) -> web.StreamResponse:
        m, q = req.method, req.query
        for sub in _ACCESS_SUBRESOURCES:
            if sub in q and m in ("PUT", "GET", "DELETE"):
                return await self._bucket_access_op(req, sub)
        if "versioning" in q and m in ("PUT", "GET"):
            return await self.bucket_versioning(req)
        if "lifecycle" in q and m in ("PUT", "GET", "DELETE"):
            return await self.bucket_lifecycle(req)
        if "tagging" in q:
            raise S3Error("NotImplemented", "Bucket tagging is not implemented.")
        if m == "PUT":
            return await (self.put_website(req) if "website" in q else self.create_bucket(req))
        if m == "HEAD":
            return await self.head_bucket(req)
        if m == "DELETE":
            return await (self.delete_website(req) if "website" in q
                          else self.delete_bucket(req))
        if m == "GET":
            if "location" in q:
                return await self.get_location(req)
            if "website" in q:
                return await self.get_website(req)
            if "uploads" in q:
                return await self.list_uploads(req)
            if "versions" in q:
                return await self.list_versions(req)
            return await self.list_objects(req, v2=q.get("list-type") == "2")
        if m == "POST" and "delete" in q:
            return await self.delete_objects(req)
        raise S3Error("MethodNotAllowed")

    async def _object_op(self, req: Req) -> web.StreamResponse:
        m, q = req.method, req.query
        if "acl" in q and m in ("PUT", "GET"):
            return await (self.put_object_acl(req) if m == "PUT" else self.get_object_acl(req))
        if "tagging" in q and m in ("PUT", "GET", "DELETE"):
            return await self.object_tagging(req)
        if m == "PUT":
            if "uploadId" in q or "partNumber" in q:
                if "x-amz-copy-source" in req.headers:
                    return await self.upload_part_copy(req)
                return await self.upload_part(req)
            if "x-amz-copy-source" in req.headers:
                return await self.copy_object(req)
            return await self.put_object(req)
        if m in ("GET", "HEAD"):
            if "uploadId" in q and m == "GET":
                return await self.list_parts(req)
            if "attributes" in q and m == "GET":
                return await self.get_object_attributes(req)
            return await self.get_object(req, head=m == "HEAD")
        if m == "DELETE":
            if "uploadId" in q:
                return await self.abort_upload(req)
            return await self.delete_object(req)
        if m == "POST":
            if "uploads" in q:
                return await self.create_upload(req)
            if "uploadId" in q:
                return await self.complete_upload(req)
        raise S3Error("MethodNotAllowed")

    # -- helpers ----------------------------------------------------------------------------

    def _xml(self, body: bytes, status: int = 200) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/xml")

    async def _bucket_allowed(self, req: Req, action: Action, key: str | None = None,
                              bucket: str | None = None) -> None:
        if not await asyncio.to_thread(self.rt.allowed, req.user, action, bucket or req.bucket,
                                       key):
            raise S3Error("AccessDenied")

    async def _continue(self, req: Req) -> None:
        """Ask for the body (100 Continue) when the client waits for that; called once the
        request passed every check that can be made without it."""
        if req.expects_continue and not req.continued:
            req.continued = True
            writer = req.request.writer
            await writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.output_size = 0  # the response proper has not started

    async def _read_small_body(self, req: Req,
                               headers: Mapping[str, str] | None = None) -> bytes:
        """The (XML) body, verified by `headers` (default: the request's)."""
        length = req.request.content_length
        if length is not None and length > MAX_XML_BODY:
            raise S3Error("MalformedXML", "The XML you provided was too large.")
        await self._continue(req)
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.rt.body_reader(req.request.content, req.auth,
                                               req.headers if headers is None else headers):
            size += len(chunk)
            if size > MAX_XML_BODY:
                raise S3Error("MalformedXML", "The XML you provided was too large.")
            chunks.append(chunk)
        return b"".join(chunks)

    def _declared_length(self, req: Req) -> int:
        h = req.headers
        decoded = h.get("x-amz-decoded-content-length")
        text = decoded if decoded is not None else h.get("Content-Length")
        if text is None:
            raise S3Error("MissingContentLength")
        try:
            length = int(text)
        except ValueError:
            raise S3Error("InvalidArgument", "Content-Length is not a number.") from None
        if length > self.rt.config.max_object_bytes:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed "
                          "size", extra={"MaxSizeAllowed": str(self.rt.config.max_object_bytes),
                                         "ProposedSize": str(length)})
        return length

    async def _receive(self, req: Req) -> PendingWrite:
        """Stream the verified body into a temp file; the caller commits or aborts it."""
        declared = self._declared_length(req)
        await self._continue(req)
        reader = self.rt.body_reader(req.request.content, req.auth, req.headers)
        hashes = hasattr(reader, "md5_hex")
        pending = await asyncio.to_thread(self.storage.begin_write, hash_md5=not hashes)
        try:
            async for chunk in reader:
                pending.write(chunk)
                if pending.size > declared:
                    raise S3Error("IncompleteBody", "The body is longer than declared.")
            if pending.size != declared:
                raise S3Error("IncompleteBody")
            if hashes:
                pending.etag = str(getattr(reader, "md5_hex"))
            pending.checksums = dict(getattr(reader, "checksums", {}))
        except BaseException:
            pending.abort()
            raise
        return pending

    # -- service and buckets ----------------------------------------------------------------

    async def list_buckets(self, req: Req) -> web.StreamResponse:
        if req.user is None:
            raise S3Error("AccessDenied")
        user = req.user
        q = req.query
        limit = _int_param(q, "max-buckets", 10000, 1, 10000)
        token = q.get("continuation-token")
        after = _unb64(token) if token is not None else ""
        prefix = q.get("prefix")
        buckets = await asyncio.to_thread(self.storage.list_buckets)
        visible = [b for b in buckets if self.rt.policy.visible(user, b.name, b.owner)
                   and b.name > after and b.name.startswith(prefix or "")]
        page = visible[:limit]
        next_token = _b64(page[-1].name) if len(visible) > limit else None
        return self._xml(xmlio.list_buckets(page, user.name, prefix=prefix,
                                            next_token=next_token))

    async def create_bucket(self, req: Req) -> web.StreamResponse:
        if not self.rt.policy.may_create_buckets(req.user):
            raise S3Error("AccessDenied")
        assert req.user is not None
        if publicaccess.acl_from_headers(req.headers) == PUBLIC_READ:
            raise S3Error("AccessDenied", "New buckets block public access: create the bucket, "
                          "then allow it with PutPublicAccessBlock and set the ACL.")
        body = await self._read_small_body(req)
        constraint = xmlio.parse_create_bucket(body)
        if constraint and constraint != self.rt.config.region:
            raise S3Error("IllegalLocationConstraintException",
                          f"The {constraint} location constraint is incompatible with the "
                          "region specific endpoint this request was sent to.", status=400)
        await asyncio.to_thread(self.storage.create_bucket, req.bucket, req.user.name)
        # As new S3 buckets: public access stays blocked until the owner allows it (this also
        # replaces whatever a deleted bucket of the same name left behind).
        await asyncio.to_thread(self.rt.access.save, req.bucket, BucketAccess(block=ALL_BLOCKED))
        return web.Response(status=200, headers={"Location": f"/{req.bucket}"})

    async def head_bucket(self, req: Req) -> web.StreamResponse:
        def may() -> bool:
            return any(self.rt.allowed(req.user, a, req.bucket)
                       for a in ("read", "list", "write", "manage"))

        if not await asyncio.to_thread(may):
            raise S3Error("AccessDenied")
        return web.Response(status=200, headers={"x-amz-bucket-region": self.rt.config.region})

    async def delete_bucket(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "manage")
        if await asyncio.to_thread(self.rt.versions.has_versions, req.bucket):
            raise S3Error("BucketNotEmpty", resource=f"/{req.bucket}",
                          extra={"BucketName": req.bucket})
        await asyncio.to_thread(self.storage.delete_bucket, req.bucket)
        await asyncio.to_thread(self.rt.versions.drop_bucket, req.bucket)
        await asyncio.to_thread(self.rt.lifecycle_rules.delete, req.bucket)
        await asyncio.to_thread(self.rt.access.drop, req.bucket)
        return web.Response(status=204)

    async def bucket_versioning(self, req: Req) -> web.StreamResponse:
        versions = self.rt.versions
        if req.method == "GET":
            await self._bucket_allowed(req, "list")
            await asyncio.to_thread(self.storage.require_bucket, req.bucket)
            return self._xml(xmlio.versioning(await asyncio.to_thread(versions.status,
                                                                      req.bucket)))
        await self._bucket_allowed(req, "manage")
        status = xmlio.parse_versioning(await self._read_small_body(req))
        await asyncio.to_thread(versions.set_status, req.bucket, status)
        return web.Response(status=200)

    async def list_versions(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "list")
        state = await asyncio.to_thread(self.storage.bucket_state, req.bucket)
        q = req.query
        prefix = check_text(q.get("prefix", ""), "prefix")
        delimiter = check_text(q.get("delimiter", ""), "delimiter")
        key_marker = check_text(q.get("key-marker", ""), "key-marker")
        vid_marker = q.get("version-id-marker", "")
        max_keys = _int_param(q, "max-keys", 1000, 0, 1000)
        enc = q.get("encoding-type")
        if enc is not None and enc != "url":
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                          extra={"ArgumentName": "encoding-type", "ArgumentValue": enc})
        listing = await asyncio.to_thread(self.rt.versions.list, req.bucket, prefix, delimiter,
                                          key_marker, vid_marker, max_keys)
        return self._xml(xmlio.list_versions(
            req.bucket, listing, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
            version_id_marker=vid_marker, max_keys=max_keys, url=enc == "url",
            owner=state.owner or (req.user.name if req.user else "")))

    async def bucket_lifecycle(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "manage")
        store = self.rt.lifecycle_rules
        if req.method == "GET":
            body = await asyncio.to_thread(store.get, req.bucket)
            if body is None:
                raise S3Error("NoSuchLifecycleConfiguration", "The lifecycle configuration "
                              "does not exist", status=404, extra={"BucketName": req.bucket})
            return self._xml(body)
        if req.method == "DELETE":
            await asyncio.to_thread(store.delete, req.bucket)
            return web.Response(status=204)
        await asyncio.to_thread(store.put, req.bucket, await self._read_small_body(req))
        return web.Response(status=200)

    async def object_tagging(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "read" if req.method == "GET" else "write", req.key)
        info = await asyncio.to_thread(self.rt.versions.get, req.bucket, req.key,
                                       req.query.get("versionId"))
        headers = self._version_header(req.bucket, info)
        if req.method == "GET":
            tags = await asyncio.to_thread(self.rt.tags.get, req.bucket, info)
            resp = self._xml(xmlio.tagging(tags))
            resp.headers.update(headers)
            return resp
        tags = {} if req.method == "DELETE" else parse_tagging(
            await self._read_small_body(req))
        await asyncio.to_thread(self.rt.tags.put, req.bucket, info, tags)
        return web.Response(status=204 if req.method == "DELETE" else 200, headers=headers)

    def _version_header(self, bucket: str, info: ObjectInfo) -> dict[str, str]:
        """x-amz-version-id, sent (as S3) once the bucket's versioning was configured."""
        if info.version_id == "null" and self.rt.versions.status(bucket) is None:
            return {}
        return {"x-amz-version-id": info.version_id}

    async def get_location(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "list")
        return self._xml(xmlio.location(self.rt.config.region))

    async def put_website(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "manage")
        body = await self._read_small_body(req)
        cfg = parse_website_xml(body)
        await asyncio.to_thread(self.storage.set_website, req.bucket, render_website_xml(cfg))
        return web.Response(status=200)

    async def get_website(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "manage")
        cfg = await asyncio.to_thread(self.rt.website_config, req.bucket)
        if cfg is None:
            raise S3Error("NoSuchWebsiteConfiguration", extra={"BucketName": req.bucket})
        return self._xml(render_website_xml(cfg).encode("utf-8"))

    async def delete_website(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "manage")
        await asyncio.to_thread(self.storage.set_website, req.bucket, None)
        return web.Response(status=204)

    # -- bucket policy, ACL, Block Public Access (publicaccess.py) --------------------------

    async def _bucket_access_op(self, req: Req, sub: str) -> web.StreamResponse:
        await self._bucket_allowed(req, "manage")
        m, bucket, store = req.method, req.bucket, self.rt.access
        access = await asyncio.to_thread(store.load, bucket)
        if sub == "policyStatus":
            if m != "GET":
                raise S3Error("MethodNotAllowed")
            if access.policy is None:
                raise _no_policy(bucket)
            return self._xml(publicaccess.render_policy_status(access.policy.public))
        if sub == "policy":
            if m == "GET":
                if access.policy is None:
                    raise _no_policy(bucket)
                return web.Response(body=access.policy.text.encode("utf-8"),
                                    content_type="application/json")
            if m == "DELETE":
                await asyncio.to_thread(store.update, bucket,
                                        lambda a: replace(a, policy=None))
                return web.Response(status=204)
            policy = parse_policy(await self._read_small_body(req), bucket)
            if policy.public and access.effective_block.block_public_policy:
                raise S3Error("AccessDenied", "The bucket's BlockPublicPolicy setting refuses "
                              "a public policy (PutPublicAccessBlock to allow it).")
            await asyncio.to_thread(store.update, bucket, lambda a: replace(a, policy=policy))
            return web.Response(status=204)
        if sub == "acl":
            if m == "GET":
                return self._xml(publicaccess.render_acl(await self._owner(req), access.acl))
            if m == "DELETE":
                raise S3Error("MethodNotAllowed")
            acl = await self._acl_of_put_acl(req)
            self._check_public_acl(access, acl)
            await asyncio.to_thread(store.update, bucket, lambda a: replace(a, acl=acl))
            return web.Response(status=200)
        if m == "GET":
            if access.block is None:
                raise S3Error("NoSuchPublicAccessBlockConfiguration", "The public access "
                              "block configuration was not found", status=404,
                              extra={"BucketName": bucket})
            return self._xml(publicaccess.render_block(access.block))
        if m == "DELETE":
            await asyncio.to_thread(store.update, bucket, lambda a: replace(a, block=None))
            return web.Response(status=204)
        block = publicaccess.parse_block(await self._read_small_body(req))
        await asyncio.to_thread(store.update, bucket, lambda a: replace(a, block=block))
        return web.Response(status=200)

    async def _owner(self, req: Req) -> str:
        state = await asyncio.to_thread(self.storage.bucket_state, req.bucket)
        return self.rt.policy.owner_of(req.bucket, state.owner) or ""

    async def _acl_of_put_acl(self, req: Req) -> str:
        """PutBucketAcl / PutObjectAcl: the canned ACL from the headers or the XML body."""
        body = await self._read_small_body(req)
        acl = publicaccess.acl_from_headers(req.headers)
        if acl is not None:
            if body.strip():
                raise S3Error("UnexpectedContent", "This request does not support content "
                              "together with x-amz-acl or x-amz-grant-* headers.", status=400)
            return acl
        if not body.strip():
            raise S3Error("MissingSecurityHeader", "Your request was missing a required "
                          "header: x-amz-acl or an AccessControlPolicy body.")
        return publicaccess.acl_from_xml(body)

    def _check_public_acl(self, access: BucketAccess, acl: str) -> None:
        if acl == PUBLIC_READ and access.effective_block.block_public_acls:
            raise S3Error("AccessDenied", "The bucket's BlockPublicAcls setting refuses public "
                          "ACLs (PutPublicAccessBlock to allow them).")

    async def _object_acl_to_set(self, req: Req) -> str | None:
        """The ACL a PutObject/CopyObject/CreateMultipartUpload asks for, checked: making an
        object public takes the bucket owner (manage) and an unblocked bucket."""
        acl = publicaccess.acl_from_headers(req.headers)
        if acl == PUBLIC_READ:
            await self._bucket_allowed(req, "manage")
            self._check_public_acl(await asyncio.to_thread(self.rt.access.load, req.bucket), acl)
        return acl

    async def put_object_acl(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write", req.key)
        acl = await self._acl_of_put_acl(req)
        if acl == PUBLIC_READ:
            await self._bucket_allowed(req, "manage")
        self._check_public_acl(await asyncio.to_thread(self.rt.access.load, req.bucket), acl)
        info = await asyncio.to_thread(self.storage.stat_object, req.bucket, req.key)
        await asyncio.to_thread(self.rt.access.set_object_acl, req.bucket, req.key,
                                object_identity(info), acl)
        return web.Response(status=200)

    async def get_object_acl(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "read", req.key)
        info = await asyncio.to_thread(self.storage.stat_object, req.bucket, req.key)
        acl = await asyncio.to_thread(self.rt.access.object_acl, req.bucket, req.key,
                                      object_identity(info))
        return self._xml(publicaccess.render_acl(await self._owner(req), acl))

    async def list_objects(self, req: Req, *, v2: bool) -> web.StreamResponse:
        await self._bucket_allowed(req, "list")
        state = await asyncio.to_thread(self.storage.bucket_state, req.bucket)
        owner = state.owner or (req.user.name if req.user else "")
        q = req.query
        prefix = check_text(q.get("prefix", ""), "prefix")
        delimiter = check_text(q.get("delimiter", ""), "delimiter")
        max_keys = _int_param(q, "max-keys", 1000, 0, 1000)
        enc = q.get("encoding-type")
        if enc is not None and enc != "url":
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                          extra={"ArgumentName": "encoding-type", "ArgumentValue": enc})
        url = enc == "url"
        if v2:
            token = q.get("continuation-token")
            start_after = q.get("start-after")
            if start_after is not None:
                check_text(start_after, "start-after")
            after = _unb64(token) if token is not None else (start_after or "")
            result = await asyncio.to_thread(self.storage.list_objects, req.bucket, prefix,
                                             delimiter, after, max_keys)
            next_token = (_b64(result.next_after) if result.truncated and result.next_after
                          is not None else None)
            return self._xml(xmlio.list_objects_v2(
                req.bucket, result, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
                url=url, start_after=start_after, token=token, next_token=next_token,
                owner=owner if q.get("fetch-owner") == "true" else None))
        marker = check_text(q.get("marker", ""), "marker")
        result = await asyncio.to_thread(self.storage.list_objects, req.bucket, prefix,
                                         delimiter, marker, max_keys)
        return self._xml(xmlio.list_objects_v1(req.bucket, result, prefix=prefix,
                                               delimiter=delimiter, max_keys=max_keys, url=url,
                                               marker=marker, owner=owner))

    # -- objects ----------------------------------------------------------------------------

    async def put_object(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write", req.key)
        acl = await self._object_acl_to_set(req)
        tagging = req.headers.get("x-amz-tagging")
        tags = tags_from_header(tagging) if tagging is not None else {}
        condition = write_condition_of(req.headers)
        pending = await self._receive(req)
        headers = stored_headers_from(req.headers) | object_checksum(pending.checksums)
        info = await asyncio.to_thread(self.storage.commit, pending, req.bucket, req.key,
                                       headers, condition=condition)
        await self._set_new_object_acl(req.bucket, info, acl)
        if tags:
            await asyncio.to_thread(self.rt.tags.put, req.bucket, info, tags)
        return web.Response(status=200, headers={"ETag": f'"{info.etag}"',
                                                 **checksum_headers(info.headers),
                                                 **self._version_header(req.bucket, info)})

    async def get_object(self, req: Req, *, head: bool) -> web.StreamResponse:
        await self._bucket_allowed(req, "read", req.key)
        q = req.query
        overrides = {h: q[p] for p, h in _RESPONSE_OVERRIDES.items() if p in q}
        if overrides and req.user is None:
            raise S3Error("InvalidRequest", "Request specific response headers cannot be used "
                                            "for anonymous GET requests.")
        for _ in range(3):
            try:
                info = await asyncio.to_thread(self.rt.versions.get, req.bucket, req.key,
                                               q.get("versionId"))
            except S3Error as e:
                if e.code == "NoSuchKey":
                    # As S3: without list permission a missing key is indistinguishable
                    # from a forbidden one.
                    await self._bucket_allowed(req, "list")
                raise
            try:
                fd = await asyncio.to_thread(open_checked, info)
                break
            except Changed:
                continue
        else:
            raise S3Error("InternalError", "The object kept changing while being read.")
        try:
            outcome = evaluate_preconditions(req.method, req.headers, info.etag,
                                             info.last_modified)
            headers = object_headers(info)
            if outcome == "not_modified":
                return web.Response(status=304, headers={
                    k: v for k, v in headers.items() if k in ("ETag", "Last-Modified")})
            if outcome == "precondition_failed":
                raise S3Error("PreconditionFailed", extra={"Condition": "If-Match"})
            rng = None
            if "partNumber" in q:
                rng = self._part_of(req, info)
            elif if_range_allows(req.headers.get("If-Range"), info.etag, info.last_modified):
                try:
                    rng = parse_range(req.headers.get("Range"), info.size)
                except Unsatisfiable:
                    raise S3Error("InvalidRange", extra={
                        "RangeRequested": req.headers.get("Range", ""),
                        "ActualObjectSize": str(info.size)}) from None
            headers.update(overrides)
            if rng is None and req.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
                headers.update(checksum_headers(info.headers))
            if info.parts:
                headers["x-amz-mp-parts-count"] = str(info.parts)
            headers.update(self._version_header(req.bucket, info))
            headers["x-amz-request-id"] = req.request_id
            headers["x-amz-id-2"] = req.request_id
        except BaseException:
            os.close(fd)
            raise
        return await send_file(req.request, fd, info, 206 if rng else 200, headers, rng, head,
                               self.rt.config.limits.idle_timeout_s)

    def _part_of(self, req: Req, info: ObjectInfo) -> ByteRange | None:
        """The bytes `?partNumber=N` selects (None: the whole object)."""
        if "Range" in req.headers:
            raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber "
                                            "query parameter")
        number = _int_param(req.query, "partNumber", 0, 1, 10000)
        if number < 1:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and "
                          "10000, inclusive", extra={"ArgumentName": "partNumber"})
        try:
            return part_range(info.part_sizes, info.parts, info.size, number)
        except Unsatisfiable:
            raise S3Error("InvalidPartNumber", extra={
                "PartNumberRequested": str(number),
                "ActualPartCount": str(max(info.parts, 1))}) from None
        except ValueError as e:
            raise S3Error("InvalidRequest", f"partNumber cannot be served: {e}.") from None

    async def get_object_attributes(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "read", req.key)
        wanted = {a.strip() for a in req.headers.get("x-amz-object-attributes", "").split(",")
                  if a.strip()}
        unknown = wanted - xmlio.OBJECT_ATTRIBUTES
        if not wanted or unknown:
            raise S3Error("InvalidArgument", "Invalid attribute name specified." if unknown
                          else "x-amz-object-attributes header specifying the attributes to be "
                          "retrieved is either missing or empty", extra={
                              "ArgumentName": "x-amz-object-attributes"})
        # Headers here, unlike ListParts' query parameters.
        marker = _int_param(req.headers, "x-amz-part-number-marker", 0, 0, 10000)
        max_parts = _int_param(req.headers, "x-amz-max-parts", 1000, 0, 1000)
        try:
            info = await asyncio.to_thread(self.storage.stat_object, req.bucket, req.key)
        except S3Error as e:
            if e.code == "NoSuchKey":
                await self._bucket_allowed(req, "list")
            raise
        resp = self._xml(xmlio.object_attributes(info, wanted, marker=marker,
                                                 max_parts=max_parts))
        resp.headers["Last-Modified"] = http_date(info.last_modified)
        return resp

    async def _set_new_object_acl(self, bucket: str, info: ObjectInfo, acl: str | None) -> None:
        # A new object without an ACL is private: a record left by the previous version names
        # that version's identity, so it no longer applies and needs no write here.
        if acl is not None and acl != PRIVATE:
            await asyncio.to_thread(self.rt.access.set_object_acl, bucket, info.key,
                                    object_identity(info), acl)

    async def delete_object(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write", req.key)
        version_id, marker = await asyncio.to_thread(self.rt.versions.delete, req.bucket,
                                                     req.key, req.query.get("versionId"))
        await asyncio.to_thread(self.rt.access.forget_object, req.bucket, req.key)
        headers = {} if version_id is None else {"x-amz-version-id": version_id}
        if marker:
            headers["x-amz-delete-marker"] = "true"
        return web.Response(status=204, headers=headers)

    async def delete_objects(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write")
        if "Content-MD5" not in req.headers and not any(
                h.lower().startswith("x-amz-checksum-") or h.lower() == "x-amz-trailer"
                for h in req.headers):
            raise S3Error("InvalidRequest", "Missing required header for this request: "
                                            "Content-MD5 or x-amz-checksum-*")
        body = await self._read_small_body(req)
        objs, quiet = xmlio.parse_delete(body)
        deleted: list[tuple[str, str | None, str | None, bool]] = []
        errors: list[tuple[str, S3Error]] = []

        def work() -> None:
            for key, asked in objs:
                try:
                    version_id, marker = self.rt.versions.delete(req.bucket, key, asked)
                    self.rt.access.forget_object(req.bucket, key)
                    deleted.append((key, asked, version_id, marker))
                except S3Error as e:
                    errors.append((key, e))

        await asyncio.to_thread(work)
        return self._xml(xmlio.delete_result(deleted, errors, quiet))

    async def _copy_source(self, req: Req) -> tuple[str, str, ObjectInfo, str | None]:
        """The x-amz-copy-source object (bucket, key, info, the versionId asked for) once the
        caller may read it and its x-amz-copy-source-if-* conditions hold."""
        source, _, source_query = req.headers["x-amz-copy-source"].partition("?")
        src_version = dict(parse_query(source_query)).get("versionId")
        src_bucket, _, src_raw_key = decode_path(source).lstrip("/").partition("/")
        if not src_bucket or not src_raw_key:
            raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and "
                          "key: sourcebucket/sourcekey", extra={
                              "ArgumentName": "x-amz-copy-source"})
        src_key = check_key(src_raw_key)
        await self._bucket_allowed(req, "read", src_key, bucket=src_bucket)
        src = await asyncio.to_thread(self.rt.versions.get, src_bucket, src_key, src_version)
        cond = {std: req.headers[amz] for amz, std in _COPY_CONDITIONS.items()
                if amz in req.headers}
        if cond and evaluate_preconditions("GET", cond, src.etag, src.last_modified) != "ok":
            raise S3Error("PreconditionFailed")
        return src_bucket, src_key, src, src_version

    async def copy_object(self, req: Req) -> web.StreamResponse:
        src_bucket, src_key, src, src_version = await self._copy_source(req)
        await self._bucket_allowed(req, "write", req.key)
        acl = await self._object_acl_to_set(req)
        directive = req.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.",
                          extra={"ArgumentName": "x-amz-metadata-directive"})
        # Copying an older version onto its own key is how a version is restored (S3 too).
        if (src_bucket, src_key) == (req.bucket, req.key) and directive == "COPY" and \
                src_version is None:
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying "
                          "to copy an object to itself without changing the object's metadata, "
                          "storage class, website redirect location or encryption attributes.")
        headers = None if directive == "COPY" else stored_headers_from(req.headers)
        info = await asyncio.to_thread(self.storage.copy_object, src_bucket, src_key,
                                       req.bucket, req.key, headers, src)
        await self._set_new_object_acl(req.bucket, info, acl)
        resp = self._xml(xmlio.copy_result(info))
        resp.headers.update(self._version_header(req.bucket, info))
        if src_version is not None:
            resp.headers["x-amz-copy-source-version-id"] = src.version_id
        return resp

    # -- multipart --------------------------------------------------------------------------

    async def create_upload(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write", req.key)
        acl = await self._object_acl_to_set(req)
        owner = req.user.name if req.user else None
        checksum = upload_checksum(req.headers.get(ALGORITHM_HEADER),
                                   req.headers.get(TYPE_HEADER))
        upload = await asyncio.to_thread(self.storage.create_upload, req.bucket, req.key,
                                         stored_headers_from(req.headers) | checksum, owner)
        if acl is not None and acl != PRIVATE:
            await asyncio.to_thread(self.rt.access.set_upload_acl, req.bucket,
                                    upload.upload_id, acl)
        resp = self._xml(xmlio.initiate_result(upload))
        resp.headers.update(checksum)
        return resp

    async def upload_part(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write", req.key)
        number = self._part_number(req)
        upload = await asyncio.to_thread(self.storage.get_upload, req.bucket, req.key,
                                         req.query["uploadId"])
        pending = await self._receive(req)
        part = await asyncio.to_thread(self.storage.commit_part, pending, upload, number)
        return web.Response(status=200, headers={"ETag": f'"{part.etag}"',
                                                 **part_checksum(part.checksums)})

    async def upload_part_copy(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write", req.key)
        number = self._part_number(req)
        upload = await asyncio.to_thread(self.storage.get_upload, req.bucket, req.key,
                                         req.query["uploadId"])
        _, _, src, _ = await self._copy_source(req)
        rng = ByteRange(0, src.size - 1)
        header = req.headers.get("x-amz-copy-source-range")
        if header is not None:
            try:
                rng = parse_copy_range(header, src.size)
            except ValueError as e:
                raise S3Error("InvalidArgument", str(e), extra={
                    "ArgumentName": "x-amz-copy-source-range", "ArgumentValue": header}) from None
        part = await asyncio.to_thread(self.storage.copy_part, src, rng.start, rng.length,
                                       upload, number)
        return self._xml(xmlio.copy_part_result(part))

    def _part_number(self, req: Req) -> int:
        number = _int_param(req.query, "partNumber", 0, 1, 10000)
        if number < 1 or "uploadId" not in req.query:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and "
                          "10000, inclusive", extra={"ArgumentName": "partNumber"})
        return number

    async def complete_upload(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write", req.key)
        condition = write_condition_of(req.headers)
        # Its x-amz-checksum-* headers are the object's checksum, not the XML body's.
        claimed = claimed_checksums(req.headers)
        body_headers = CIMultiDict((k, v) for k, v in req.headers.items()
                                   if k.lower().removeprefix(CHECKSUM_HEADER_PREFIX)
                                   not in claimed)
        wanted = xmlio.parse_complete(await self._read_small_body(req, body_headers))
        size_text = req.headers.get("x-amz-mp-object-size")
        if size_text is not None and not size_text.strip().isdigit():
            raise S3Error("InvalidArgument", "x-amz-mp-object-size must be a number.")
        # Also answers a retry of a Complete that succeeded (storage keeps a record).
        upload_id = req.query["uploadId"]
        info: ObjectInfo = await asyncio.to_thread(
            self.storage.complete_upload, req.bucket, req.key, upload_id, wanted, condition,
            claimed, int(size_text) if size_text is not None else None)
        acl = await asyncio.to_thread(self.rt.access.upload_acl, req.bucket, upload_id)
        await self._set_new_object_acl(req.bucket, info, acl)
        await asyncio.to_thread(self.rt.access.forget_upload, req.bucket, upload_id)
        host = req.headers.get("Host", "")
        resp = self._xml(xmlio.complete_result(f"http://{host}/{req.bucket}/{req.raw_key}",
                                               req.bucket, info))
        resp.headers.update(self._version_header(req.bucket, info))
        return resp

    async def abort_upload(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write", req.key)
        upload = await asyncio.to_thread(self.storage.get_upload, req.bucket, req.key,
                                         req.query["uploadId"])
        await asyncio.to_thread(self.storage.abort_upload, upload)
        await asyncio.to_thread(self.rt.access.forget_upload, req.bucket, upload.upload_id)
        return web.Response(status=204)

    async def list_parts(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "write", req.key)
        upload = await asyncio.to_thread(self.storage.get_upload, req.bucket, req.key,
                                         req.query["uploadId"])
        marker = _int_param(req.query, "part-number-marker", 0, 0, 10000)
        max_parts = _int_param(req.query, "max-parts", 1000, 0, 1000)
        parts = [p for p in await asyncio.to_thread(self.storage.list_parts, upload)
                 if p.number > marker]
        truncated = len(parts) > max_parts
        return self._xml(xmlio.list_parts(upload, parts[:max_parts], marker=marker,
                                          max_parts=max_parts, truncated=truncated))

    async def list_uploads(self, req: Req) -> web.StreamResponse:
        await self._bucket_allowed(req, "list")
        prefix = check_text(req.query.get("prefix", ""), "prefix")
        max_uploads = _int_param(req.query, "max-uploads", 1000, 0, 1000)
        uploads = await asyncio.to_thread(self.storage.list_uploads, req.bucket, prefix)
        truncated = len(uploads) > max_uploads
        return self._xml(xmlio.list_uploads(req.bucket, uploads[:max_uploads], prefix=prefix,
                                            max_uploads=max_uploads, truncated=truncated))


def _no_policy(bucket: str) -> S3Error:
    return S3Error("NoSuchBucketPolicy", "The bucket policy does not exist", status=404,
                   extra={"BucketName": bucket})
