"""S3 XML rendering (pure): what listings say beyond the keys."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from lbcdn.bucket import xmlio
from lbcdn.bucket.storage import BucketState, ListResult, ObjectInfo

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def result(*keys: str) -> ListResult:
    return ListResult([ObjectInfo(k, "", 1, 0, "e", {}) for k in keys], [], False, None)


def test_v1_prefix_is_never_encoded_but_keys_are() -> None:
    root = ET.fromstring(xmlio.list_objects_v1("b", result("a b/1"), prefix="a b/",
                                               delimiter="", max_keys=10, url=True,
                                               marker="", owner="u"))
    assert root.findtext(f"{NS}Prefix") == "a b/"
    assert root.findtext(f"{NS}Contents/{NS}Key") == "a%20b/1"
    assert root.findtext(f"{NS}Contents/{NS}Owner/{NS}ID") == "u"


def test_v2_owner_only_when_fetched() -> None:
    def owner(who: str | None) -> str | None:
        root = ET.fromstring(xmlio.list_objects_v2(
            "b", result("k"), prefix="", delimiter="", max_keys=10, url=False,
            start_after=None, token=None, next_token=None, owner=who))
        return root.findtext(f"{NS}Contents/{NS}Owner/{NS}ID")
    assert (owner(None), owner("u")) == (None, "u")


def test_xml_unsafe_characters_in_keys_are_references() -> None:
    body = xmlio.list_objects_v2("b", result("tab\tbell\x07"), prefix="", delimiter="",
                                 max_keys=10, url=False, start_after=None, token=None,
                                 next_token=None, owner=None)
    assert b"<Key>tab\tbell&#x7;</Key>" in body


def test_list_buckets_token_and_prefix() -> None:
    root = ET.fromstring(xmlio.list_buckets([BucketState("b1", 0.0)], "u", prefix="b",
                                            next_token="tok"))
    assert [root.findtext(f"{NS}{t}") for t in ("ContinuationToken", "Prefix")] == ["tok", "b"]
    root = ET.fromstring(xmlio.list_buckets([], "u"))
    assert root.find(f"{NS}ContinuationToken") is None and root.find(f"{NS}Prefix") is None
