"""CloudFront signed URLs and cookies (lbcdn.cache.signedurl), with vectors made by botocore's
CloudFrontSigner: what a real signer makes is accepted, and each way of being wrong is refused
with CloudFront's error."""

from __future__ import annotations

import datetime
from urllib.parse import urlsplit

import pytest
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from lbcdn.cache.signedurl import (ACCESS_DENIED, MISSING_KEY, UNKNOWN_KEY, Verifier,
                                   canned_policy, parse_policy, resource_pattern,
                                   safe_b64decode, split_query)

NOW = 1_800_000_000
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
BASE = "https://cdn.example.com/videos/a.mp4"


def signer(key: rsa.RSAPrivateKey = KEY, key_id: str = "K1") -> CloudFrontSigner:
    return CloudFrontSigner(key_id, lambda m: key.sign(m, padding.PKCS1v15(), hashes.SHA1()))


def at(ts: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)


def verifier() -> Verifier:
    return Verifier({"K1": KEY.public_key()})


def check(v: Verifier, url: str, *, ip: str = "192.0.2.7", now: float = NOW,
          cookies: bytes | None = None) -> object:
    u = urlsplit(url)
    headers = [(b"Cookie", cookies)] if cookies is not None else []
    return v.check(u.scheme.encode(), u.netloc.encode(), u.path.encode(),
                   u.query.encode() if u.query else None, headers, ip, now)


def test_canned_url_from_botocore_is_accepted_until_it_expires() -> None:
    url = signer().generate_presigned_url(BASE, date_less_than=at(NOW + 60))
    assert "Expires=" in url and "Policy=" not in url
    v = verifier()
    assert check(v, url) is None
    assert check(v, url, now=NOW + 59.9) is None
    assert check(v, url, now=NOW + 60) is ACCESS_DENIED


def test_canned_url_keeps_the_viewers_own_query() -> None:
    url = signer().generate_presigned_url(BASE + "?quality=hd&x=1", date_less_than=at(NOW + 60))
    assert check(verifier(), url) is None
    assert check(verifier(), url.replace("quality=hd", "quality=sd")) is ACCESS_DENIED


def test_tampered_canned_url_is_denied() -> None:
    url = signer().generate_presigned_url(BASE, date_less_than=at(NOW + 60))
    v = verifier()
    assert check(v, url.replace(str(NOW + 60), str(NOW + 6000))) is ACCESS_DENIED
    assert check(v, url.replace("a.mp4", "b.mp4")) is ACCESS_DENIED
    assert check(v, url.replace("https://", "http://")) is ACCESS_DENIED
    sig = url.split("Signature=")[1].split("&")[0]
    flipped = ("A" if sig[5] != "A" else "B").join((sig[:5], sig[6:]))
    assert check(v, url.replace(sig, flipped)) is ACCESS_DENIED


def test_other_key_and_unknown_key_id() -> None:
    forged = signer(OTHER).generate_presigned_url(BASE, date_less_than=at(NOW + 60))
    assert check(verifier(), forged) is ACCESS_DENIED
    unknown = signer(key_id="K9").generate_presigned_url(BASE, date_less_than=at(NOW + 60))
    assert check(verifier(), unknown) is UNKNOWN_KEY


def test_missing_parts() -> None:
    v = verifier()
    assert check(v, BASE) is MISSING_KEY
    url = signer().generate_presigned_url(BASE, date_less_than=at(NOW + 60))
    assert check(v, url.replace("&Key-Pair-Id=K1", "")) is MISSING_KEY
    assert check(v, url.replace("Key-Pair-Id=K1", "Key-Pair-Id=")) is MISSING_KEY
    no_sig = "&".join(p for p in url.split("&") if not p.startswith("Signature="))
    assert check(v, no_sig) is ACCESS_DENIED
    no_expiry = url.split("?")[0] + "?" + "&".join(
        p for p in url.split("?")[1].split("&") if not p.startswith("Expires="))
    assert check(v, no_expiry) is ACCESS_DENIED


def test_custom_policy_with_wildcard_ip_and_start() -> None:
    s = signer()
    policy = s.build_policy("https://cdn.example.com/videos/*", at(NOW + 60),
                            date_greater_than=at(NOW - 10), ip_address="192.0.2.0/24")
    url = s.generate_presigned_url(BASE, policy=policy)
    assert "Policy=" in url and "Expires=" not in url
    v = verifier()
    assert check(v, url) is None
    other = url.replace("/videos/a.mp4", "/videos/sub/b.mp4")
    assert check(v, other) is None                      # the wildcard covers it
    assert check(v, url.replace("/videos/", "/audio/")) is ACCESS_DENIED  # wrong resource
    assert check(v, url, ip="198.51.100.1") is ACCESS_DENIED             # wrong address
    assert check(v, url, ip="::1") is ACCESS_DENIED
    assert check(v, url, now=NOW - 11) is ACCESS_DENIED                  # too early
    assert check(v, url, now=NOW + 60) is ACCESS_DENIED                  # expired


def test_signed_cookies_canned_and_custom() -> None:
    s = signer()
    policy = s.build_policy("https://cdn.example.com/videos/*", at(NOW + 60))
    sig = s.rsa_signer(policy.encode())
    cookies = b"session=1; CloudFront-Policy=%s; CloudFront-Signature=%s; " \
              b"CloudFront-Key-Pair-Id=K1" % (s._url_b64encode(policy.encode()),
                                               s._url_b64encode(sig))
    v = verifier()
    assert check(v, BASE, cookies=cookies) is None
    assert check(v, BASE, cookies=cookies, now=NOW + 61) is ACCESS_DENIED
    assert check(v, "https://cdn.example.com/other", cookies=cookies) is ACCESS_DENIED
    assert check(v, BASE, cookies=b"CloudFront-Policy=x; CloudFront-Signature=y") \
        is MISSING_KEY
    canned = canned_policy(BASE, NOW + 60)
    c = b"CloudFront-Expires=%d; CloudFront-Signature=%s; CloudFront-Key-Pair-Id=K1" % (
        NOW + 60, s._url_b64encode(s.rsa_signer(canned)))
    assert check(v, BASE, cookies=c) is None


def test_verified_signatures_are_cached_but_conditions_checked_each_time() -> None:
    calls = []

    class Counting(Verifier):
        @staticmethod
        def _verify(*args: object) -> object:  # type: ignore[override]
            calls.append(1)
            return Verifier._verify(*args)  # type: ignore[arg-type]

    v = Counting({"K1": KEY.public_key()}, size=2)
    url = signer().generate_presigned_url(BASE, date_less_than=at(NOW + 60))
    assert check(v, url) is None and check(v, url) is None
    assert len(calls) == 1
    assert check(v, url, now=NOW + 61) is ACCESS_DENIED   # expiry still checked
    for n in range(3):                                      # bounded: the first is evicted
        check(v, signer().generate_presigned_url(BASE, date_less_than=at(NOW + n + 100)))
    assert len(v.verified.items) == len(v.decided.items) == 2
    check(v, url)
    assert len(calls) == 5
    # one custom policy (a cookie) over many URLs: verified once
    s = signer()
    policy = s.build_policy("https://cdn.example.com/*", at(NOW + 60)).encode()
    cookie = b"CloudFront-Policy=%s; CloudFront-Signature=%s; CloudFront-Key-Pair-Id=K1" % (
        s._url_b64encode(policy), s._url_b64encode(s.rsa_signer(policy)))
    for n in range(4):
        assert check(v, f"https://cdn.example.com/{n}", cookies=cookie) is None
    assert len(calls) == 6


def test_pieces() -> None:
    assert safe_b64decode(b"-_~A") is None  # not valid base64 after translation (bad padding)
    assert safe_b64decode(b"YQ__") == b"a"
    assert split_query(b"a=1&Expires=5&Signature=x%7E&b&Key-Pair-Id=K") == (
        {b"Expires": b"5", b"Signature": b"x~", b"Key-Pair-Id": b"K"}, b"a=1&b")
    assert resource_pattern("http*://h/a?c*").fullmatch("https://h/abc?x=1")
    assert not resource_pattern("https://h/a.c").fullmatch("https://h/abc")
    for bad in (b"{", b"[]", b'{"Statement":[]}',
                b'{"Statement":[{"Condition":{}}]}',
                b'{"Statement":[{"Condition":{"DateLessThan":{"AWS:EpochTime":"1"}}}]}',
                b'{"Statement":[{"Condition":{"DateLessThan":{"AWS:EpochTime":1},'
                b'"IpAddress":{"AWS:SourceIp":"nope"}}}]}'):
        assert parse_policy(bad) is None, bad
    p = parse_policy(b'{"Statement":[{"Condition":{"DateLessThan":{"AWS:EpochTime":9}}}]}')
    assert p is not None and p.allows("https://any/thing", "192.0.2.1", 8)


@pytest.mark.parametrize("pem_kind", ["inline", "file"])
def test_key_groups_from_config(tmp_path: object, pem_kind: str) -> None:
    from pathlib import Path

    from lbcdn.cache.behavior import Distribution
    from lbcdn.cache.config import CacheConfig
    from lbcdn.configkit.reflect import Loader

    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert isinstance(tmp_path, Path)
    (tmp_path / "k.pem").write_bytes(pem)
    key = {"pem": pem.decode()} if pem_kind == "inline" else {"pem_file": str(tmp_path / "k.pem")}
    raw = {"origins": {"o": {"url": "http://127.0.0.1:1"}},
           "key_groups": {"g": {"public_keys": {"K1": key}}},
           "distributions": {"d": {"default_behavior": {"path_pattern": "*", "origin": "o"},
                                   "behaviors": [{"path_pattern": "/videos/*", "origin": "o",
                                                  "trusted_key_groups": ["g"]}]}}}
    ld = Loader({})
    cfg = ld.value(CacheConfig, raw, "cache")
    assert not ld.problems
    dist = Distribution(cfg.distributions["d"], cfg)
    assert dist.select(b"/public").signed is None
    behavior = dist.select(b"/videos/a.mp4")
    assert behavior.signed is not None
    url = signer().generate_presigned_url(BASE + "?q=1", date_less_than=at(NOW + 60))
    assert check(behavior.signed, url) is None
    q = urlsplit(url).query.encode()
    assert behavior.keys.kept_query(q) is None  # policy `none`
    assert behavior.forwarding.query_for(q) is None


def test_key_group_config_errors_name_their_path(tmp_path: object) -> None:
    from lbcdn.cache.config import CacheConfig
    from lbcdn.configkit.reflect import Loader

    raw = {"origins": {"o": {"url": "http://127.0.0.1:1"}},
           "key_groups": {"g": {"public_keys": {
               "K1": {"pem": "not a key"},
               "K2": {"pem_file": "/nonexistent/k.pem"},
               "K3": {"pem": "x", "pem_file": "y"},
               "K4": {"pem": OTHER.private_bytes(
                   serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                   serialization.NoEncryption()).decode()}}},
               "empty": {"public_keys": {}}},
           "distributions": {"d": {"default_behavior": {"path_pattern": "*", "origin": "o",
                                                        "trusted_key_groups": ["g", "nope"]}}}}
    ld = Loader({})
    ld.value(CacheConfig, raw, "cache")
    problems = dict(ld.problems)
    keys = "cache.key_groups.g.public_keys"
    assert "not a PEM RSA public key" in problems[f"{keys}.K1.pem"]
    assert "cannot read '/nonexistent/k.pem'" in problems[f"{keys}.K2.pem_file"]
    assert problems[f"{keys}.K3"] == "needs exactly one of pem, pem_file"
    assert "not a PEM RSA public key" in problems[f"{keys}.K4.pem"]
    assert problems["cache.key_groups.empty.public_keys"] == "must hold at least one key"
    assert problems["cache.distributions.d.default_behavior.trusted_key_groups[1]"] == \
        "unknown key group 'nope'"
