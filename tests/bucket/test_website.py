"""The website endpoint over real sockets: the website port and website Host names."""

from __future__ import annotations

import http.client
import os
from pathlib import Path
from typing import Any

import pytest

from lbcdn.bucket.websiteconf import (Redirect, RoutingRule, WebsiteConfig, match_rule,
                                      parse_website_xml, redirect_location,
                                      render_website_xml)
from tests.bucket.conftest import ThreadServer


def get(srv: ThreadServer, path: str, host: str = "site.example", method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server.website_port, timeout=10)
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.fixture
def site(server: ThreadServer, bucket_root: Path) -> ThreadServer:
    d = bucket_root / "site"
    (d / "docs").mkdir(parents=True)
    (d / "index.html").write_text("<h1>home</h1>")
    (d / "error.html").write_text("<h1>oops</h1>")
    (d / "docs" / "index.html").write_text("docs index")
    (d / "style.css").write_text("body{}")
    (d / "big.bin").write_bytes(os.urandom(1 << 20))
    return server


def test_index_documents(site: ThreadServer) -> None:
    status, h, body = get(site, "/")
    assert (status, body) == (200, b"<h1>home</h1>")
    assert h["content-type"].startswith("text/html")
    assert get(site, "/docs/")[2] == b"docs index"


def test_folder_without_slash_redirects(site: ThreadServer) -> None:
    status, h, _ = get(site, "/docs")
    assert status == 302 and h["location"] == "/docs/"


def test_missing_key_error_document_403_without_list(site: ThreadServer) -> None:
    status, h, body = get(site, "/nope.html")
    assert status == 403 and body == b"<h1>oops</h1>"  # public_list is off: 403, as S3


def test_missing_key_404_when_listable(tmp_path: Path) -> None:
    from lbcdn.bucket.config import load_buckets_config
    from tests.bucket.conftest import ENV, base_config

    root = tmp_path / "r"
    data = base_config(root)
    data["buckets"]["site"]["public_list"] = True
    data["buckets"]["site"]["website"]["error_document"] = None
    srv = ThreadServer(load_buckets_config(data, env=ENV)).start()
    try:
        status, h, body = get(srv, "/nope.html")
        assert status == 404 and h["content-type"].startswith("text/html")
        assert b"Code: NoSuchKey" in body and b"RequestId:" in body
    finally:
        srv.stop()


def test_content_type_etag_last_modified_and_conditionals(site: ThreadServer) -> None:
    status, h, body = get(site, "/style.css")
    assert status == 200 and h["content-type"] == "text/css"
    etag, lm = h["etag"], h["last-modified"]
    assert etag.startswith('"') and len(etag) == 34
    assert get(site, "/style.css", headers={"If-None-Match": etag})[0] == 304
    assert get(site, "/style.css", headers={"If-Modified-Since": lm})[0] == 304
    assert get(site, "/style.css", headers={"If-Match": '"other"'})[0] == 412
    assert get(site, "/style.css", headers={"If-Match": etag})[0] == 200


def test_range_and_416(site: ThreadServer, bucket_root: Path) -> None:
    data = (bucket_root / "site" / "big.bin").read_bytes()
    status, h, body = get(site, "/big.bin", headers={"Range": "bytes=1000-1999"})
    assert status == 206 and body == data[1000:2000]
    assert h["content-range"] == f"bytes 1000-1999/{len(data)}"
    status, h, body = get(site, "/big.bin", headers={"Range": f"bytes={len(data)}-"})
    assert status == 416 and h["content-range"] == f"bytes */{len(data)}"
    status, h, body = get(site, "/big.bin")
    assert status == 200 and body == data  # the sendfile path


def test_head_and_method_not_allowed(site: ThreadServer) -> None:
    status, h, body = get(site, "/index.html", method="HEAD")
    assert status == 200 and body == b"" and h["content-length"] == "13"
    status, h, body = get(site, "/index.html", method="POST")
    assert status == 405


def test_stored_headers_and_redirect_location(site: ThreadServer, s3: Any) -> None:
    s3.put_object(Bucket="site", Key="a.txt", Body=b"A", ContentType="text/plain",
                  CacheControl="max-age=60", ContentEncoding="identity",
                  ContentDisposition="inline", Metadata={"who": "me"})
    status, h, body = get(site, "/a.txt")
    assert (h["cache-control"], h["content-encoding"], h["content-disposition"],
            h["x-amz-meta-who"]) == ("max-age=60", "identity", "inline", "me")
    s3.put_object(Bucket="site", Key="moved.html", Body=b"",
                  WebsiteRedirectLocation="/a.txt")
    status, h, _ = get(site, "/moved.html")
    assert status == 301 and h["location"] == "/a.txt"


def test_routing_rules_and_redirect_all(site: ThreadServer, s3: Any) -> None:
    s3.put_bucket_website(Bucket="site", WebsiteConfiguration={
        "IndexDocument": {"Suffix": "index.html"},
        "RoutingRules": [
            {"Condition": {"KeyPrefixEquals": "old/"},
             "Redirect": {"ReplaceKeyPrefixWith": "docs/", "HttpRedirectCode": "302"}},
            {"Condition": {"HttpErrorCodeReturnedEquals": "403"},
             "Redirect": {"HostName": "fallback.example", "Protocol": "https"}}]})
    status, h, _ = get(site, "/old/page.html")
    assert status == 302 and h["location"] == "http://site.example/docs/page.html"
    status, h, _ = get(site, "/missing")
    assert status == 301 and h["location"] == "https://fallback.example/missing"
    s3.put_bucket_website(Bucket="site", WebsiteConfiguration={
        "RedirectAllRequestsTo": {"HostName": "www.example.com", "Protocol": "https"}})
    status, h, _ = get(site, "/x/y?z=1")
    assert status == 301 and h["location"] == "https://www.example.com/x/y?z=1"


def test_private_bucket_and_unknown_host(site: ThreadServer, s3: Any) -> None:
    s3.put_object(Bucket="shared", Key="index.html", Body=b"private")
    s3.put_bucket_website(Bucket="shared", WebsiteConfiguration={
        "IndexDocument": {"Suffix": "index.html"}})
    status, _, body = get(site, "/", host="shared.web.example")
    assert status == 403 and b"private" not in body
    assert get(site, "/", host="nobody.web.example")[0] == 404
    # the website Host also works on the S3 API port
    conn = http.client.HTTPConnection("127.0.0.1", site.server.port, timeout=10)
    conn.request("GET", "/", headers={"Host": "site.example"})
    assert conn.getresponse().read() == b"<h1>home</h1>"
    conn.close()


def test_escape_attempts_on_website(site: ThreadServer) -> None:
    for path in ("/..%2f..%2fetc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/a/../../etc/passwd",
                 "/%252e%252e/x", "/a%00b", "/..%5cx"):
        status, _, body = get(site, path)
        assert status in (400, 403, 404), path
        assert b"root:" not in body


def test_website_xml_round_trip_and_rules() -> None:
    cfg = WebsiteConfig("index.html", "err.html", rules=(
        RoutingRule(Redirect(replace_key_with="gone.html", http_redirect_code=307),
                    key_prefix_equals="x/", http_error_code_returned_equals=404),))
    again = parse_website_xml(render_website_xml(cfg).encode())
    assert again == cfg
    assert match_rule(cfg, "x/1", None) is None
    rule = match_rule(cfg, "x/1", 404)
    assert rule is not None
    assert redirect_location(rule, "x/1", "h", "http") == "http://h/gone.html"
    for bad in (b"<nope/>", b"<WebsiteConfiguration/>",
                b"<WebsiteConfiguration><IndexDocument><Suffix>a/b</Suffix></IndexDocument>"
                b"</WebsiteConfiguration>", b"not xml"):
        with pytest.raises(Exception):
            parse_website_xml(bad)
