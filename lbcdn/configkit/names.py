"""Syntax rules for names found in the configuration: host names, header names, `host:port`.

Pure functions. Each `*_problem` function returns None when the text is acceptable, else a
short message meant to follow a YAML path (`routes[0].match.host[1]: <message>`).
"""

from __future__ import annotations

import ipaddress
import re

# RFC 9110 token characters: what a header field name may contain.
TOKEN_PATTERN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(TOKEN_PATTERN)
# A host-name label. Underscore is outside RFC 1123 but common in container service names,
# and matching is literal, so accepting it costs nothing.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")


def header_token_problem(name: str) -> str | None:
    if not name:
        return "must not be empty"
    if not _TOKEN.fullmatch(name):
        return f"{name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
    return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def hostname_problem(name: str) -> str | None:
    """A DNS-style host name (already lower-cased), or an IPv4 address."""
    if not name:
        return "must not be empty"
    if len(name) > 253:
        return "host name longer than 253 characters"
    for label in name.split("."):
        if not label:
            return f"{name!r} has an empty label"
        if len(label) > 63:
            return f"{name!r} has a label longer than 63 characters"
        if not _LABEL.fullmatch(label):
            return (f"{name!r} is not a valid host name (letters, digits, '-' and '_' "
                    "in dot-separated labels)")
    return None


def match_host_problem(host: str) -> str | None:
    """A Host condition: exact name, `*.example.com`, IPv4, or bracketed IPv6 (lower-cased)."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if ":" in inner and is_ip(inner):
            return None
        return f"{host!r} is not a valid bracketed IPv6 address"
    if ":" in host:
        return f"{host!r}: give the host name without a port"
    if "*" in host:
        if not host.startswith("*.") or "*" in host[2:]:
            return (f"{host!r}: a wildcard must be the whole first label, as in "
                    "'*.example.com'")
        rest = host[2:]
        if "." not in rest:
            return f"{host!r}: a wildcard needs at least two labels after '*.'"
        return hostname_problem(rest)
    return hostname_problem(host)


def target_host_problem(host: str) -> str | None:
    """A backend host: IPv4/IPv6 address (unbracketed) or a host name."""
    if ":" in host:
        return None if is_ip(host) else f"{host!r} is not a valid IPv6 address"
    return hostname_problem(host)


def bind_address_problem(address: str) -> str | None:
    """An address to listen on: an IP literal or a host name such as `localhost`."""
    if ":" in address:
        return None if is_ip(address) else f"{address!r} is not a valid IPv6 address"
    return hostname_problem(address)


def split_host_port(text: str) -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` -> (host, port) with the brackets removed; None if malformed.

    The port is returned unchecked for range so the caller can report bounds itself.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            return None
        host, port = text[1:end], text[end + 2:]
        if not is_ip(host) or ":" not in host:
            return None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            return None
    if not port.isascii() or not port.isdigit() or len(port) > 5:
        return None
    return host.lower(), int(port)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
