"""The website endpoint: S3 static website hosting semantics over a bucket.

Rules (as S3's website endpoints behave):
- GET and HEAD only (405 otherwise); requests are anonymous, so an object is served only where
  it is public: the config's `public_read` (or a public prefix), a bucket policy allowing
  s3:GetObject to everyone, or a public-read object ACL (runtime.allowed).
- RedirectAllRequestsTo answers every request with a 301. Routing rules without an error
  condition apply before the lookup, those with one after it (websiteconf.match_rule).
- `/` and every `folder/` get the index document; `folder` without the slash, where
  `folder/<index>` exists and `folder` does not, gets a 302 to `folder/`.
- A missing key is 404 when anonymous listing is allowed, else 403 (as S3). 4xx answers use the
  error document, with the original status, when one is configured and readable; otherwise
  S3's HTML error page.
- An object with `x-amz-website-redirect-location` answers 301 to it.
- Objects are served with strong ETags, Last-Modified, conditionals (304/412), a single Range
  (206, or 416 with `Content-Range: bytes */size`) and their stored headers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from html import escape

from aiohttp import web

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.httpsem import (Unsatisfiable, evaluate_preconditions, if_range_allows,
                                  parse_range)
from lbcdn.bucket.keys import check_key, decode_path
from lbcdn.bucket.runtime import BucketRuntime
from lbcdn.bucket.serve import Changed, object_headers, open_checked, send_file
from lbcdn.bucket.storage import ObjectInfo, new_request_id
from lbcdn.bucket.websiteconf import (WebsiteConfig, match_rule, redirect_all_location,
                                      redirect_location)

log = logging.getLogger("lbcdn.bucket.website")


def error_page(status: int, reason: str, err: S3Error, request_id: str,
               key: str | None) -> bytes:
    items = [f"<li>Code: {escape(err.code)}</li>", f"<li>Message: {escape(err.message)}</li>"]
    for name, value in err.extra.items():
        items.append(f"<li>{escape(name)}: {escape(value)}</li>")
    if key is not None and "Key" not in err.extra:
        items.append(f"<li>Key: {escape(key)}</li>")
    items.append(f"<li>RequestId: {escape(request_id)}</li>")
    title = f"{status} {reason}"
    return (f"<html>\n<head><title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n<ul>\n"
            + "\n".join(items) + "\n</ul>\n<hr/>\n</body>\n</html>\n").encode("utf-8")


class Website:
    """aiohttp handler for website endpoints; `bucket_for` picks the bucket from the request."""

    def __init__(self, runtime: BucketRuntime, default_bucket: str | None = None) -> None:
        self.rt = runtime
        self.storage = runtime.storage
        self.default_bucket = default_bucket

    async def handle(self, request: web.Request) -> web.StreamResponse:
        bucket = self.rt.website_bucket(request.headers.get("Host", "")) or self.default_bucket
        return await self.serve(request, bucket)

    async def serve(self, request: web.Request, bucket: str | None) -> web.StreamResponse:
        request_id = new_request_id()
        try:
            resp = await self._serve(request, bucket, request_id)
        except S3Error as e:
            resp = self._error(request, e, request_id, None)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("website request failed: %s", request.raw_path)
            resp = self._error(request, S3Error("InternalError"), request_id, None)
        if not resp.prepared:
            resp.headers["x-amz-request-id"] = request_id
        return resp

    def _error(self, request: web.Request, err: S3Error, request_id: str,
               key: str | None) -> web.Response:
        reason = web.Response(status=err.status).reason
        headers = {"x-amz-request-id": request_id}
        if err.code == "InvalidRange" and "ActualObjectSize" in err.extra:
            headers["Content-Range"] = f"bytes */{err.extra['ActualObjectSize']}"
        if err.status == 405:
            headers["Allow"] = "GET, HEAD"
        if request.method == "HEAD" or err.status == 304:
            return web.Response(status=err.status, headers=headers)
        return web.Response(status=err.status, headers=headers,
                            body=error_page(err.status, reason, err, request_id, key),
                            content_type="text/html", charset="utf-8")

    def _redirect(self, status: int, location: str) -> web.Response:
        return web.Response(status=status, headers={"Location": location})

    async def _serve(self, request: web.Request, bucket: str | None,
                     request_id: str) -> web.StreamResponse:
        if bucket is None or not await asyncio.to_thread(self.storage.bucket_exists, bucket):
            raise S3Error("NoSuchBucket", extra={"BucketName": bucket or ""})
        cfg = await asyncio.to_thread(self.rt.website_config, bucket)
        if cfg is None:
            raise S3Error("NoSuchWebsiteConfiguration", extra={"BucketName": bucket})
        if request.method not in ("GET", "HEAD"):
            raise S3Error("MethodNotAllowed", extra={"Method": request.method,
                                                     "ResourceType": "OBJECT"})
        host = request.headers.get("Host", "")
        proto = "https" if request.headers.get("X-Forwarded-Proto") == "https" else "http"
        if cfg.redirect_all_host is not None:
            return self._redirect(301, redirect_all_location(cfg, request.raw_path, proto))
        raw_path = request.raw_path.split("?", 1)[0]
        key = decode_path(raw_path)[1:]
        rule = match_rule(cfg, key, None)
        if rule is not None:
            return self._redirect(rule.redirect.http_redirect_code,
                                  redirect_location(rule, key, host, proto))
        lookup = key + (cfg.index_suffix or "") if key == "" or key.endswith("/") else key
        try:
            check_key(lookup)
            info, public = await self._find(bucket, lookup)
        except S3Error as e:
            if e.code not in ("NoSuchKey", "InvalidObjectName", "AccessDenied"):
                raise
            info, public = None, False
        if info is not None and not public:
            return await self._fail(request, bucket, cfg, key, S3Error("AccessDenied"),
                                    request_id, proto)
        if info is None:
            if lookup == key and cfg.index_suffix:
                folder_index = f"{key}/{cfg.index_suffix}"
                try:
                    check_key(folder_index)
                    found_public = (await self._find(bucket, folder_index))[1]
                except S3Error:
                    found_public = False
                if found_public:
                    return self._redirect(302, f"/{raw_path.lstrip('/')}/")
            listable = await asyncio.to_thread(self.rt.allowed, None, "list", bucket)
            err = S3Error("NoSuchKey", extra={"Key": lookup}) if listable else \
                S3Error("AccessDenied")
            return await self._fail(request, bucket, cfg, key, err, request_id, proto)
        redirect = info.headers.get("x-amz-website-redirect-location")
        if redirect:
            return self._redirect(301, redirect)
        return await self._send(request, bucket, info, 200, request_id)

    async def _find(self, bucket: str, key: str) -> tuple[ObjectInfo | None, bool]:
        """The object at `key` (None: there is none) and whether anyone may read it, in one
        trip to a thread."""
        def find() -> tuple[ObjectInfo | None, bool]:
            try:
                info = self.storage.stat_object(bucket, key)
            except S3Error as e:
                if e.code == "NoSuchKey":
                    return None, False
                raise
            return info, self.rt.allowed(None, "read", bucket, key, info)

        return await asyncio.to_thread(find)

    async def _fail(self, request: web.Request, bucket: str, cfg: WebsiteConfig, key: str,
                    err: S3Error, request_id: str, proto: str) -> web.StreamResponse:
        rule = match_rule(cfg, key, err.status)
        if rule is not None:
            return self._redirect(rule.redirect.http_redirect_code,
                                  redirect_location(rule, key, request.headers.get("Host", ""),
                                                    proto))
        if cfg.error_key and 400 <= err.status < 500:
            try:
                doc, public = await self._find(bucket, cfg.error_key)
            except S3Error:
                doc, public = None, False
            if doc is not None and public:
                return await self._send(request, bucket, doc, err.status, request_id, plain=True)
        return self._error(request, err, request_id, key)

    async def _send(self, request: web.Request, bucket: str, info: ObjectInfo, status: int,
                    request_id: str, *, plain: bool = False) -> web.StreamResponse:
        for _ in range(3):
            try:
                fd = await asyncio.to_thread(open_checked, info)
                break
            except Changed:
                info = await asyncio.to_thread(self.storage.stat_object, bucket, info.key)
        else:
            raise S3Error("InternalError", "The object kept changing while being read.")
        try:
            headers = object_headers(info)
            rng = None
            if not plain:
                outcome = evaluate_preconditions(request.method, request.headers, info.etag,
                                                 info.last_modified)
                if outcome == "not_modified":
                    os.close(fd)
                    return web.Response(status=304, headers={
                        k: v for k, v in headers.items() if k in ("ETag", "Last-Modified",
                                                                  "Cache-Control")})
                if outcome == "precondition_failed":
                    raise S3Error("PreconditionFailed")
                if if_range_allows(request.headers.get("If-Range"), info.etag,
                                   info.last_modified):
                    try:
                        rng = parse_range(request.headers.get("Range"), info.size)
                    except Unsatisfiable:
                        raise S3Error("InvalidRange", extra={
                            "ActualObjectSize": str(info.size)}) from None
            headers["x-amz-request-id"] = request_id
        except BaseException:
            os.close(fd)
            raise
        return await send_file(request, fd, info, 206 if rng else status, headers, rng,
                               request.method == "HEAD", self.rt.config.limits.idle_timeout_s)
