from __future__ import annotations

import pytest

from lbcdn.bucket.access import AccessPolicy
from lbcdn.bucket.config import load_buckets_config
from lbcdn.configkit.errors import ConfigError

BASE = {"root": "/srv/b", "users": {"alice": {"access_key_id": "AKIDA",
                                              "secret_access_key": "${A_SECRET}"},
                                    "bob": {"access_key_id": "AKIDB",
                                            "secret_access_key": "bs"}},
        "buckets": {"pub": {"public_read_prefixes": ["img/"], "read": ["*"],
                            "write": ["alice"], "public_list": True}}}


def test_loads_with_secret_from_env() -> None:
    cfg = load_buckets_config(BASE, env={"A_SECRET": "s3cr3t"})
    assert cfg.users["alice"].secret_access_key == "s3cr3t"
    assert cfg.port == 9000 and cfg.region == "us-east-1"


def problems(data: dict[str, object], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_buckets_config(data, env=env if env is not None else {"A_SECRET": "x"})
    return e.value.lines()


def test_errors_name_the_yaml_path() -> None:
    assert any(p.startswith("buckets.users.alice.secret_access_key: environment variable "
                            "A_SECRET") for p in problems(BASE, env={}))
    bad = {**BASE, "buckets": {"Bad_Name": {"read": ["carol"]}}}
    lines = problems(bad)
    assert any(line.startswith('buckets.buckets.Bad_Name: not a valid S3 bucket name')
               for line in lines)
    assert any("buckets.buckets.Bad_Name.read[0]: unknown user 'carol'" in x for x in lines)
    assert any("unknown key" in x for x in problems({**BASE, "prot": 1}))
    dup = {**BASE, "users": {"a": {"access_key_id": "SAME", "secret_access_key": "x"},
                             "b": {"access_key_id": "SAME", "secret_access_key": "y"}},
           "buckets": {}}
    assert any("already used by user 'a'" in x for x in problems(dup))


def test_access_policy() -> None:
    p = AccessPolicy(load_buckets_config(BASE, env={"A_SECRET": "x"}))
    alice, bob = p.user("AKIDA"), p.user("AKIDB")
    assert p.secret_for("AKIDB") == "bs" and p.secret_for("nobody") is None
    assert p.allowed(None, "read", "pub", "img/a.png")
    assert not p.allowed(None, "read", "pub", "doc/a.txt")
    assert p.allowed(None, "list", "pub") and not p.allowed(None, "write", "pub", "img/x")
    assert p.allowed(bob, "read", "pub", "doc/a.txt")  # "*" = any signed-in user
    assert not p.allowed(bob, "write", "pub", "x") and p.allowed(alice, "write", "pub", "x")
    assert not p.allowed(alice, "manage", "pub")
    assert p.allowed(bob, "manage", "mine", stored_owner="bob")  # created through the API
    assert not p.allowed(alice, "read", "mine", "k", stored_owner="bob")
