"""Public access stored through the API (pure): canned ACLs, Block Public Access settings, and
the decision they give together with the bucket policy.

Rules (S3's, for the subset lbcdn keeps):
- ACLs are canned: `private` or `public-read` (`bucket-owner-read` and
  `bucket-owner-full-control` mean private here: the bucket owner already has full control).
  A bucket's public-read lets anyone list it; an object's lets anyone read that object. An
  AccessControlPolicy body or `x-amz-grant-read` may grant READ to the AllUsers group and
  FULL_CONTROL to the owner, nothing else; other grants are NotImplemented (refused, not
  ignored).
- Block Public Access (PublicAccessBlockConfiguration), none stored = all off:
  BlockPublicAcls refuses setting a public ACL (PutBucketAcl, PutObjectAcl, x-amz-acl on
  PutObject/CopyObject/CreateMultipartUpload) with AccessDenied; IgnorePublicAcls makes public
  ACLs grant nothing; BlockPublicPolicy refuses a public PutBucketPolicy with AccessDenied;
  RestrictPublicBuckets makes a public policy's Allow statements grant nothing. Buckets created
  through the API start with all four on, as new S3 buckets do: public access is opt-in.
- Decision: a policy Deny wins; then a policy Allow (unless restricted), a public ACL (unless
  ignored); else no opinion.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

from lbcdn.bucket.bucketpolicy import BucketPolicy, Decision, Verb, decide
from lbcdn.bucket.errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
PRIVATE = "private"
PUBLIC_READ = "public-read"
_CANNED = {"private": PRIVATE, "public-read": PUBLIC_READ, "bucket-owner-read": PRIVATE,
           "bucket-owner-full-control": PRIVATE}
_BLOCK_FIELDS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                 "RestrictPublicBuckets")


@dataclass(frozen=True)
class PublicAccessBlock:
    block_public_acls: bool = False
    ignore_public_acls: bool = False
    block_public_policy: bool = False
    restrict_public_buckets: bool = False

    def as_tuple(self) -> tuple[bool, bool, bool, bool]:
        return (self.block_public_acls, self.ignore_public_acls, self.block_public_policy,
                self.restrict_public_buckets)


ALL_BLOCKED = PublicAccessBlock(True, True, True, True)
NOT_BLOCKED = PublicAccessBlock()


@dataclass(frozen=True)
class BucketAccess:
    """What PutBucketPolicy, PutBucketAcl and PutPublicAccessBlock stored for one bucket."""
    policy: BucketPolicy | None = None
    acl: str = PRIVATE
    block: PublicAccessBlock | None = None

    @property
    def effective_block(self) -> PublicAccessBlock:
        return self.block if self.block is not None else NOT_BLOCKED


def public_decision(access: BucketAccess, verb: Verb, key: str | None,
                    object_public: bool) -> Decision:
    """The stored settings' word on `verb` (of `key`, whose object ACL is public when
    `object_public`): "deny", "allow" or None."""
    by_policy = decide(access.policy, verb, key)
    if by_policy == "deny":
        return "deny"
    block = access.effective_block
    if by_policy == "allow" and not block.restrict_public_buckets:
        return "allow"
    if not block.ignore_public_acls:
        if verb == "list" and access.acl == PUBLIC_READ:
            return "allow"
        if verb == "read" and object_public:
            return "allow"
    return None


def may_consult_object_acl(access: BucketAccess) -> bool:
    return not access.effective_block.ignore_public_acls


# -- ACLs ----------------------------------------------------------------------------------

def _not_implemented(what: str) -> S3Error:
    return S3Error("NotImplemented", f"{what} is not implemented: lbcdn supports the canned "
                                     "ACLs private and public-read.")


def canned_acl(value: str) -> str:
    acl = _CANNED.get(value.strip().lower())
    if acl is None:
        if value in ("public-read-write", "authenticated-read", "aws-exec-read",
                     "log-delivery-write"):
            raise _not_implemented(f"The canned ACL {value!r}")
        raise S3Error("InvalidArgument", f"Invalid canned ACL {value!r}",
                      extra={"ArgumentName": "x-amz-acl", "ArgumentValue": value})
    return acl


def _grant_read_public(value: str) -> bool:
    grantees = [g.strip() for g in value.split(",") if g.strip()]
    for grantee in grantees:
        kind, _, who = grantee.partition("=")
        if kind.strip().lower() != "uri" or who.strip().strip('"') != ALL_USERS:
            raise _not_implemented(f"The grantee {grantee!r}")
    return bool(grantees)


def acl_from_headers(headers: Mapping[str, str]) -> str | None:
    """The canned ACL a request sets (x-amz-acl or x-amz-grant-read to AllUsers), or None."""
    grants = [h for h in headers if h.lower().startswith("x-amz-grant-")]
    acl = headers.get("x-amz-acl")
    if acl is not None and grants:
        raise S3Error("InvalidRequest", "Specifying both Canned ACLs and Header Grants is not "
                                        "allowed")
    if acl is not None:
        return canned_acl(acl)
    for name in grants:
        if name.lower() != "x-amz-grant-read":
            raise _not_implemented(f"The header {name}")
    if grants:
        return PUBLIC_READ if _grant_read_public(headers[grants[0]]) else PRIVATE
    return None


def _strip(root: ET.Element) -> None:
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
        for attr in list(el.attrib):
            if "}" in attr:
                el.attrib[attr.split("}", 1)[1]] = el.attrib.pop(attr)


def _parse_xml(body: bytes, root_tag: str) -> ET.Element:
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML") from None
    _strip(root)
    if root.tag != root_tag:
        raise S3Error("MalformedXML")
    return root


def acl_from_xml(body: bytes) -> str:
    """An AccessControlPolicy body -> the canned ACL it amounts to."""
    root = _parse_xml(body, "AccessControlPolicy")
    public = False
    for grant in root.findall("AccessControlList/Grant"):
        grantee = grant.find("Grantee")
        permission = (grant.findtext("Permission") or "").strip()
        if grantee is None:
            raise S3Error("MalformedACLError", "A Grant has no Grantee.", status=400)
        kind = grantee.get("type", "")
        uri = (grantee.findtext("URI") or "").strip()
        if kind == "Group" and uri == ALL_USERS and permission == "READ":
            public = True
        elif kind == "CanonicalUser" and permission == "FULL_CONTROL":
            continue  # the owner's own grant, implied
        else:
            raise _not_implemented(f"The grant of {permission or '?'} to "
                                   f"{uri or grantee.findtext('ID') or kind or '?'}")
    return PUBLIC_READ if public else PRIVATE


def render_acl(owner: str, acl: str) -> bytes:
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n',
           f'<AccessControlPolicy xmlns="{NS}">',
           f"<Owner><ID>{escape(owner)}</ID><DisplayName>{escape(owner)}</DisplayName></Owner>",
           "<AccessControlList>",
           f'<Grant><Grantee xmlns:xsi="{XSI}" xsi:type="CanonicalUser"><ID>{escape(owner)}'
           f"</ID><DisplayName>{escape(owner)}</DisplayName></Grantee>"
           "<Permission>FULL_CONTROL</Permission></Grant>"]
    if acl == PUBLIC_READ:
        out.append(f'<Grant><Grantee xmlns:xsi="{XSI}" xsi:type="Group"><URI>{ALL_USERS}</URI>'
                   "</Grantee><Permission>READ</Permission></Grant>")
    out.append("</AccessControlList></AccessControlPolicy>")
    return "".join(out).encode("utf-8")


# -- Block Public Access -------------------------------------------------------------------

def parse_block(body: bytes) -> PublicAccessBlock:
    root = _parse_xml(body, "PublicAccessBlockConfiguration")
    values: list[bool] = []
    for name in _BLOCK_FIELDS:
        text = (root.findtext(name) or "false").strip().lower()
        if text not in ("true", "false"):
            raise S3Error("MalformedXML", f"{name} must be true or false, not {text!r}")
        values.append(text == "true")
    for child in root:
        if child.tag not in _BLOCK_FIELDS:
            raise S3Error("MalformedXML", f"Unknown element {child.tag}")
    return PublicAccessBlock(*values)


def render_block(block: PublicAccessBlock) -> bytes:
    fields = "".join(f"<{n}>{'true' if v else 'false'}</{n}>"
                     for n, v in zip(_BLOCK_FIELDS, block.as_tuple(), strict=True))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<PublicAccessBlockConfiguration xmlns="{NS}">{fields}'
            "</PublicAccessBlockConfiguration>").encode("utf-8")


def render_policy_status(public: bool) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<PolicyStatus xmlns="{NS}"><IsPublic>{"true" if public else "false"}</IsPublic>'
            "</PolicyStatus>").encode("utf-8")
