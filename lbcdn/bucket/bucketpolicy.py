"""Bucket policies (pure): the JSON of PutBucketPolicy, parsed into the subset lbcdn enforces,
and the decision it gives for one request.

The subset is what people paste to publish a bucket or a part of it, and to carve out
exceptions:

    {"Version": "2012-10-17",
     "Statement": [{"Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
                    "Action": "s3:GetObject", "Resource": "arn:aws:s3:::BUCKET/*"},
                   {"Effect": "Deny", "Principal": {"AWS": "*"},
                    "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::BUCKET/private/*"}]}

Rules:
- Principal must be everyone: `"*"`, `{"AWS": "*"}` or `{"AWS": ["*"]}`; lbcdn users are given
  access in the config, not by ARN. Actions: s3:GetObject (objects: `arn:aws:s3:::BUCKET/PATTERN`)
  and s3:ListBucket (the bucket: `arn:aws:s3:::BUCKET`), case-insensitive as in IAM; `s3:*` and
  `s3:Get*`-style wildcards are not accepted (they would grant more than lbcdn can check).
  Resource patterns use IAM's `*` (any run of characters, `/` included) and `?` (one).
- Everything else -- Condition, NotPrincipal, NotAction, NotResource, another bucket's ARN, other
  actions or principals -- is refused with MalformedPolicy naming it, never silently ignored:
  a policy is enforced as written or not stored at all.
- Evaluation as IAM: an explicit Deny wins, then an Allow, else no opinion (the config's grants
  and ACLs decide). Deny statements apply to every requester, signed or not.
- A policy is public when it has an Allow statement (every principal here is everyone).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from lbcdn.bucket.errors import S3Error

Verb = Literal["read", "list"]
Decision = Literal["allow", "deny"] | None

MAX_POLICY_BYTES = 20 * 1024  # S3's limit on a bucket policy's size
_VERSIONS = ("2012-10-17", "2008-10-17")
_ACTIONS: dict[str, Verb] = {"s3:getobject": "read", "s3:listbucket": "list"}
_STATEMENT_KEYS = {"Sid", "Effect", "Principal", "Action", "Resource"}
_REFUSED_KEYS = {
    "Condition": "Conditions are not supported",
    "NotPrincipal": "NotPrincipal is not supported",
    "NotAction": "NotAction is not supported",
    "NotResource": "NotResource is not supported",
}
_ARN_PREFIX = "arn:aws:s3:::"


@dataclass(frozen=True)
class Statement:
    allow: bool
    verbs: frozenset[str]
    # Key patterns for s3:GetObject, compiled from the resources that name objects.
    key_patterns: tuple[re.Pattern[str], ...]
    # Whether a resource names the bucket itself (for s3:ListBucket).
    bucket_resource: bool


@dataclass(frozen=True)
class BucketPolicy:
    text: str
    statements: tuple[Statement, ...]

    @property
    def public(self) -> bool:
        return any(s.allow for s in self.statements)


def malformed(message: str) -> S3Error:
    return S3Error("MalformedPolicy", message, status=400)


def _strings(value: Any, what: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) for i in items):
        raise malformed(f"{what} must be a string or a non-empty list of strings")
    return items


def _pattern(glob: str) -> re.Pattern[str]:
    # IAM wildcards: `*` any run of characters (slashes too), `?` exactly one.
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in glob), re.DOTALL)


def _principal_is_everyone(value: Any) -> bool:
    if value == "*":
        return True
    if isinstance(value, dict) and set(value) == {"AWS"}:
        aws: object = value["AWS"]
        return aws == "*" or aws == ["*"]
    return False


def _statement(raw: Any, index: int, bucket: str) -> Statement:
    where = f"Statement[{index}]"
    if not isinstance(raw, dict):
        raise malformed(f"{where} must be an object")
    for key, why in _REFUSED_KEYS.items():
        if key in raw:
            detail = f" ({', '.join(sorted(raw[key]))})" if key == "Condition" and \
                isinstance(raw[key], dict) else ""
            raise malformed(f"{where}: {why}{detail}; lbcdn enforces Effect, Principal \"*\", "
                            "Action and Resource only")
    unknown = sorted(set(raw) - _STATEMENT_KEYS)
    if unknown:
        raise malformed(f"{where}: unknown field {unknown[0]!r}")
    for needed in ("Effect", "Principal", "Action", "Resource"):
        if needed not in raw:
            raise malformed(f"{where}: missing {needed}")
    effect = raw["Effect"]
    if effect not in ("Allow", "Deny"):
        raise malformed(f"{where}: Effect must be Allow or Deny, not {effect!r}")
    if not _principal_is_everyone(raw["Principal"]):
        raise malformed(f"{where}: unsupported Principal {json.dumps(raw['Principal'])}; "
                        "only \"*\" (everyone) is supported, users are granted access in "
                        "lbcdn's config")
    verbs: set[str] = set()
    for action in _strings(raw["Action"], f"{where}.Action"):
        verb = _ACTIONS.get(action.lower())
        if verb is None:
            raise malformed(f"{where}: unsupported Action {action!r}; supported: "
                            "s3:GetObject, s3:ListBucket")
        verbs.add(verb)
    patterns: list[re.Pattern[str]] = []
    bucket_resource = False
    for resource in _strings(raw["Resource"], f"{where}.Resource"):
        if not resource.startswith(_ARN_PREFIX):
            raise malformed(f"{where}: Policy has invalid resource {resource!r} (expected "
                            f"arn:aws:s3:::{bucket} or arn:aws:s3:::{bucket}/...)")
        name, slash, keyglob = resource[len(_ARN_PREFIX):].partition("/")
        if name != bucket:
            raise malformed(f"{where}: Policy has invalid resource {resource!r}: it must "
                            f"name this bucket ({bucket})")
        if slash:
            patterns.append(_pattern(keyglob))
        else:
            bucket_resource = True
    if "read" in verbs and not patterns:
        raise malformed(f"{where}: Action s3:GetObject does not apply to any resource in the "
                        f"statement (name objects: arn:aws:s3:::{bucket}/*)")
    if "list" in verbs and not bucket_resource:
        raise malformed(f"{where}: Action s3:ListBucket does not apply to any resource in the "
                        f"statement (name the bucket: arn:aws:s3:::{bucket})")
    return Statement(effect == "Allow", frozenset(verbs), tuple(patterns), bucket_resource)


def parse_policy(text: str | bytes, bucket: str) -> BucketPolicy:
    """PutBucketPolicy body -> BucketPolicy; MalformedPolicy naming the problem otherwise."""
    if isinstance(text, bytes):
        if len(text) > MAX_POLICY_BYTES:
            raise malformed(f"Policies must be no larger than {MAX_POLICY_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise malformed("The policy is not UTF-8") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise malformed(f"Policies must be valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise malformed("A policy must be a JSON object")
    unknown = sorted(set(doc) - {"Version", "Id", "Statement"})
    if unknown:
        raise malformed(f"Unknown field {unknown[0]!r}")
    version = doc.get("Version", "2008-10-17")
    if version not in _VERSIONS:
        raise malformed(f"Version must be one of {', '.join(_VERSIONS)}, not {version!r}")
    raw = doc.get("Statement")
    statements = raw if isinstance(raw, list) else [raw] if isinstance(raw, dict) else None
    if not statements:
        raise malformed("Missing required field Statement")
    return BucketPolicy(text, tuple(_statement(s, i, bucket) for i, s in enumerate(statements)))


def _matches(statement: Statement, verb: Verb, key: str | None) -> bool:
    if verb not in statement.verbs:
        return False
    if verb == "list":
        return statement.bucket_resource
    return key is not None and any(p.fullmatch(key) for p in statement.key_patterns)


def decide(policy: BucketPolicy | None, verb: Verb, key: str | None) -> Decision:
    """The policy's word on `verb` (of `key`): "deny" (explicit), "allow", or None."""
    if policy is None:
        return None
    matched = [s for s in policy.statements if _matches(s, verb, key)]
    if any(not s.allow for s in matched):
        return "deny"
    return "allow" if matched else None
