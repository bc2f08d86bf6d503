"""A bucket's website configuration (pure): the S3 WebsiteConfiguration XML, parsed, rendered,
and the routing-rule decisions of the website endpoint.

Rules (as S3 documents them):
- Either RedirectAllRequestsTo (HostName, optional Protocol) alone, or an IndexDocument suffix
  (non-empty, no `/`) with optional ErrorDocument and RoutingRules.
- A routing rule matches when all of its conditions hold: KeyPrefixEquals (a prefix of the
  requested key) and HttpErrorCodeReturnedEquals (the 4xx the request would get). Rules without
  an error-code condition are applied before the object is looked up; the first match wins.
- Its redirect: Protocol and HostName default to the request's; ReplaceKeyPrefixWith replaces
  the matched prefix, ReplaceKeyWith the whole key (not both); HttpRedirectCode defaults to 301.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import quote
from xml.sax.saxutils import escape

from lbcdn.bucket.errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


@dataclass(frozen=True)
class Redirect:
    protocol: str | None = None
    host_name: str | None = None
    replace_key_prefix_with: str | None = None
    replace_key_with: str | None = None
    http_redirect_code: int = 301


@dataclass(frozen=True)
class RoutingRule:
    redirect: Redirect
    key_prefix_equals: str | None = None
    http_error_code_returned_equals: int | None = None


@dataclass(frozen=True)
class WebsiteConfig:
    index_suffix: str | None = None
    error_key: str | None = None
    redirect_all_host: str | None = None
    redirect_all_protocol: str | None = None
    rules: tuple[RoutingRule, ...] = field(default_factory=tuple)


def _strip_ns(root: ET.Element) -> None:
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]


def _text(el: ET.Element | None, path: str) -> str | None:
    if el is None:
        return None
    found = el.find(path)
    if found is None:
        return None
    return found.text or ""


def _bad(msg: str) -> S3Error:
    return S3Error("InvalidArgument", msg)


def parse_website_xml(body: bytes) -> WebsiteConfig:
    """PutBucketWebsite body -> WebsiteConfig; MalformedXML / InvalidArgument otherwise."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML") from None
    _strip_ns(root)
    if root.tag != "WebsiteConfiguration":
        raise S3Error("MalformedXML")
    redirect_all = root.find("RedirectAllRequestsTo")
    index = _text(root, "IndexDocument/Suffix")
    if redirect_all is not None:
        host = _text(redirect_all, "HostName")
        if not host:
            raise _bad("RedirectAllRequestsTo requires a HostName.")
        if index is not None or root.find("RoutingRules") is not None:
            raise _bad("RedirectAllRequestsTo cannot be combined with other elements.")
        proto = _text(redirect_all, "Protocol")
        if proto not in (None, "http", "https"):
            raise _bad("Protocol must be http or https.")
        return WebsiteConfig(redirect_all_host=host, redirect_all_protocol=proto)
    if not index or "/" in index:
        raise _bad("The IndexDocument Suffix is not well formed: it must be non-empty and "
                   "contain no slash.")
    rules = []
    for rule_el in root.findall("RoutingRules/RoutingRule"):
        cond = rule_el.find("Condition")
        red = rule_el.find("Redirect")
        if red is None:
            raise _bad("A RoutingRule requires a Redirect.")
        code_text = _text(cond, "HttpErrorCodeReturnedEquals")
        redirect_code = _text(red, "HttpRedirectCode")
        proto = _text(red, "Protocol")
        if proto not in (None, "http", "https"):
            raise _bad("Protocol must be http or https.")
        rkp = _text(red, "ReplaceKeyPrefixWith")
        rk = _text(red, "ReplaceKeyWith")
        if rkp is not None and rk is not None:
            raise _bad("You can only define ReplaceKeyPrefix or ReplaceKey but not both.")
        try:
            code = int(code_text) if code_text is not None else None
            rcode = int(redirect_code) if redirect_code is not None else 301
        except ValueError:
            raise _bad("HTTP codes must be numbers.") from None
        if code is not None and not 400 <= code <= 599:
            raise _bad("HttpErrorCodeReturnedEquals must be a 4xx or 5xx code.")
        if not 300 <= rcode <= 399:
            raise _bad("HttpRedirectCode must be a 3xx code.")
        rules.append(RoutingRule(
            Redirect(proto, _text(red, "HostName"), rkp, rk, rcode),
            _text(cond, "KeyPrefixEquals"), code))
    return WebsiteConfig(index, _text(root, "ErrorDocument/Key") or None, rules=tuple(rules))


def render_website_xml(cfg: WebsiteConfig) -> str:
    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<WebsiteConfiguration xmlns="{NS}">']
    if cfg.redirect_all_host is not None:
        out.append("<RedirectAllRequestsTo>")
        out.append(f"<HostName>{escape(cfg.redirect_all_host)}</HostName>")
        if cfg.redirect_all_protocol:
            out.append(f"<Protocol>{escape(cfg.redirect_all_protocol)}</Protocol>")
        out.append("</RedirectAllRequestsTo>")
    if cfg.index_suffix is not None:
        out.append(f"<IndexDocument><Suffix>{escape(cfg.index_suffix)}</Suffix></IndexDocument>")
    if cfg.error_key is not None:
        out.append(f"<ErrorDocument><Key>{escape(cfg.error_key)}</Key></ErrorDocument>")
    if cfg.rules:
        out.append("<RoutingRules>")
        for rule in cfg.rules:
            out.append("<RoutingRule>")
            if rule.key_prefix_equals is not None or \
                    rule.http_error_code_returned_equals is not None:
                out.append("<Condition>")
                if rule.key_prefix_equals is not None:
                    out.append(f"<KeyPrefixEquals>{escape(rule.key_prefix_equals)}"
                               "</KeyPrefixEquals>")
                if rule.http_error_code_returned_equals is not None:
                    out.append("<HttpErrorCodeReturnedEquals>"
                               f"{rule.http_error_code_returned_equals}"
                               "</HttpErrorCodeReturnedEquals>")
                out.append("</Condition>")
            r = rule.redirect
            out.append("<Redirect>")
            for tag, value in (("Protocol", r.protocol), ("HostName", r.host_name),
                               ("ReplaceKeyPrefixWith", r.replace_key_prefix_with),
                               ("ReplaceKeyWith", r.replace_key_with)):
                if value is not None:
                    out.append(f"<{tag}>{escape(value)}</{tag}>")
            out.append(f"<HttpRedirectCode>{r.http_redirect_code}</HttpRedirectCode>")
            out.append("</Redirect></RoutingRule>")
        out.append("</RoutingRules>")
    out.append("</WebsiteConfiguration>")
    return "".join(out)


def match_rule(cfg: WebsiteConfig, key: str, error_code: int | None) -> RoutingRule | None:
    """The first rule matching `key`: before lookup (error_code None) only rules without an
    error-code condition are considered; after a failed lookup, only rules with one."""
    for rule in cfg.rules:
        if (rule.http_error_code_returned_equals is None) != (error_code is None):
            continue
        if error_code is not None and rule.http_error_code_returned_equals != error_code:
            continue
        if rule.key_prefix_equals is not None and not key.startswith(rule.key_prefix_equals):
            continue
        return rule
    return None


def redirect_location(rule: RoutingRule, key: str, request_host: str,
                      request_protocol: str) -> str:
    r = rule.redirect
    if r.replace_key_with is not None:
        new_key = r.replace_key_with
    elif r.replace_key_prefix_with is not None:
        prefix = rule.key_prefix_equals or ""
        new_key = r.replace_key_prefix_with + key[len(prefix):]
    else:
        new_key = key
    proto = r.protocol or request_protocol
    host = r.host_name or request_host
    return f"{proto}://{host}/{quote(new_key, safe='/~!$&()*+,;=:@')}"


def redirect_all_location(cfg: WebsiteConfig, raw_path_and_query: str,
                          request_protocol: str) -> str:
    proto = cfg.redirect_all_protocol or request_protocol
    return f"{proto}://{cfg.redirect_all_host}{raw_path_and_query}"
