"""Path and Host rewrites of a forward action (ALB's transforms, Traefik's StripPrefix and
ReplacePathRegex): what the pool is sent instead of what the client asked for.

Rules:
- The path prefix rewrite comes first: a path starting with `path_prefix` has it replaced by
  `prefix_replacement` (empty strips it); then `path_regex`'s first match in the path is
  replaced by `path_replacement`. A path that does not match is sent unchanged.
- `host_regex`'s first match in the Host (its port dropped) is replaced by `host_replacement`.
- Replacements use ALB's `$1`..`$9` for groups; everything else is literal (a backslash too).
  (`$$` is already the config's escape of a single `$`, lbcdn.configkit.env.)
- The query is kept as it was. A rewritten path that lost its leading `/` gets one back, so
  the request line stays valid.
"""

from __future__ import annotations

import re

from lbcdn.routing.config import RewriteConfig

_GROUP_REF = re.compile(r"\$([0-9])")


def replacement_problem(template: str, groups: int) -> str | None:
    """Why `template` cannot replace a match of a regex with `groups` groups, if it cannot."""
    for m in _GROUP_REF.finditer(template):
        if int(m.group(1)) > groups:
            return f"${m.group(1)} refers to a group the regex does not have ({groups})"
    return None


def _python_template(template: str) -> bytes:
    """ALB `$N` template -> a template for re.sub (backslashes literal)."""
    out: list[str] = []
    last = 0
    for m in _GROUP_REF.finditer(template):
        out.append(template[last:m.start()].replace("\\", "\\\\"))
        out.append(f"\\g<{m.group(1)}>")
        last = m.end()
    out.append(template[last:].replace("\\", "\\\\"))
    return "".join(out).encode()


def _without_port(host: bytes) -> bytes:
    """A Host value's name; a bracketed IPv6 literal keeps its colons."""
    cut = host.rfind(b":")
    return host[:cut] if cut > host.rfind(b"]") else host


class Rewriter:
    __slots__ = ("prefix", "prefix_to", "path_re", "path_to", "host_re", "host_to")

    def __init__(self, config: RewriteConfig) -> None:
        self.prefix = config.path_prefix.encode() if config.path_prefix else None
        self.prefix_to = config.prefix_replacement.encode()
        self.path_re = re.compile(config.path_regex.encode()) if config.path_regex else None
        self.path_to = _python_template(config.path_replacement)
        self.host_re = re.compile(config.host_regex.encode()) if config.host_regex else None
        self.host_to = _python_template(config.host_replacement)

    def path(self, path: bytes) -> bytes:
        if self.prefix is not None and path.startswith(self.prefix):
            path = self.prefix_to + path[len(self.prefix):]
        if self.path_re is not None:
            path = self.path_re.sub(self.path_to, path, count=1)
        return path if path.startswith(b"/") else b"/" + path

    def host(self, host: bytes) -> bytes:
        if self.host_re is None:
            return host
        return self.host_re.sub(self.host_to, _without_port(host), count=1)
