"""Bucket policy parsing and evaluation (pure): the policies people paste, and the ones that
must be refused with MalformedPolicy naming what is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lbcdn.bucket.bucketpolicy import decide, parse_policy
from lbcdn.bucket.errors import S3Error


def stmt(**over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"Sid": "PublicReadGetObject", "Effect": "Allow", "Principal": "*",
                         "Action": "s3:GetObject", "Resource": "arn:aws:s3:::site/*"}
    s.update(over)
    return s


def policy(*statements: dict[str, Any], **top: Any) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements), **top})


def refused(text: str | bytes, bucket: str = "site") -> str:
    with pytest.raises(S3Error) as e:
        parse_policy(text, bucket)
    assert e.value.code == "MalformedPolicy" and e.value.status == 400
    return e.value.message


def test_the_pasted_public_read_policy() -> None:
    p = parse_policy(policy(stmt()), "site")
    assert p.public
    assert decide(p, "read", "index.html") == "allow"
    assert decide(p, "read", "a/b/c.css") == "allow"
    assert decide(p, "list", None) is None


@pytest.mark.parametrize("principal", ["*", {"AWS": "*"}, {"AWS": ["*"]}])
def test_everyone_principal_spellings(principal: Any) -> None:
    assert parse_policy(policy(stmt(Principal=principal)), "site").public


def test_single_statement_object_lists_and_case_insensitive_action() -> None:
    p = parse_policy(json.dumps({"Version": "2008-10-17", "Statement": stmt(
        Action=["S3:GETOBJECT", "s3:ListBucket"],
        Resource=["arn:aws:s3:::site", "arn:aws:s3:::site/*"])}), "site")
    assert decide(p, "read", "x") == "allow" and decide(p, "list", None) == "allow"


def test_prefix_and_wildcards() -> None:
    p = parse_policy(policy(stmt(Resource=["arn:aws:s3:::site/public/*",
                                           "arn:aws:s3:::site/img/??.png"])), "site")
    assert decide(p, "read", "public/a/b.html") == "allow"
    assert decide(p, "read", "public") is None
    assert decide(p, "read", "private/x") is None
    assert decide(p, "read", "img/ab.png") == "allow"
    assert decide(p, "read", "img/abc.png") is None
    # regex characters in a key pattern are literal
    p2 = parse_policy(policy(stmt(Resource="arn:aws:s3:::site/a.b+(c)/*")), "site")
    assert decide(p2, "read", "a.b+(c)/x") == "allow" and decide(p2, "read", "aXb+(c)/x") is None


def test_deny_wins_over_allow() -> None:
    p = parse_policy(policy(stmt(), stmt(Effect="Deny", Principal={"AWS": "*"},
                                         Resource="arn:aws:s3:::site/private/*")), "site")
    assert decide(p, "read", "index.html") == "allow"
    assert decide(p, "read", "private/secret.txt") == "deny"
    deny_only = parse_policy(policy(stmt(Effect="Deny")), "site")
    assert not deny_only.public and decide(deny_only, "read", "x") == "deny"


def test_no_policy_no_opinion() -> None:
    assert decide(None, "read", "x") is None


@pytest.mark.parametrize("statement,needle", [
    (stmt(Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
     "Conditions are not supported (IpAddress)"),
    (stmt(Principal={"AWS": "arn:aws:iam::123456789012:root"}), "unsupported Principal"),
    (stmt(Principal={"Service": "cloudfront.amazonaws.com"}), "unsupported Principal"),
    (stmt(Action="s3:PutObject"), "unsupported Action 's3:PutObject'"),
    (stmt(Action="s3:*"), "unsupported Action 's3:*'"),
    (stmt(Resource="arn:aws:s3:::other/*"), "must name this bucket (site)"),
    (stmt(Resource="*"), "invalid resource '*'"),
    (stmt(Resource="arn:aws:s3:::site"), "s3:GetObject does not apply"),
    (stmt(Action="s3:ListBucket"), "s3:ListBucket does not apply"),
    (stmt(Effect="Maybe"), "Effect must be Allow or Deny"),
    (stmt(NotPrincipal="*"), "NotPrincipal is not supported"),
    (stmt(NotResource="arn:aws:s3:::site/x"), "NotResource is not supported"),
    (stmt(Colour="blue"), "unknown field 'Colour'"),
    ({k: v for k, v in stmt().items() if k != "Resource"}, "missing Resource"),
    (stmt(Action=[]), "Action must be a string or a non-empty list"),
])
def test_refused_statements_name_the_problem(statement: dict[str, Any], needle: str) -> None:
    assert needle in refused(policy(statement))


def test_refused_documents() -> None:
    assert "valid JSON" in refused("{not json")
    assert "JSON object" in refused("[]")
    assert "Statement" in refused(json.dumps({"Version": "2012-10-17"}))
    assert "Version" in refused(policy(stmt()).replace("2012-10-17", "2099-01-01"))
    assert "UTF-8" in refused(b"\xff\xfe")
    assert "20480 bytes" in refused(b" " * 30000)
    # the error names the failing statement
    assert refused(policy(stmt(), stmt(Action="s3:DeleteObject"))).startswith("Statement[1]")


def test_policy_keeps_its_text() -> None:
    text = policy(stmt())
    assert parse_policy(text.encode(), "site").text == text
