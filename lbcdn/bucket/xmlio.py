"""S3 XML bodies (pure): parsing request documents and rendering result documents.

Rules: requests are parsed with ElementTree (no DTDs or entities are expanded by it), with the
S3 namespace optional, and anything unexpected is MalformedXML. Results are rendered as S3
renders them, namespace included; with `encoding-type=url` keys and prefixes are
percent-encoded (`+` too, because botocore decodes with unquote_plus).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from urllib.parse import quote
from xml.sax.saxutils import escape

from lbcdn.bucket.checksums import part_checksum, xml_fields
from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.httpsem import iso8601
from lbcdn.bucket.storage import BucketState, ListResult, ObjectInfo, PartInfo, UploadInfo
from lbcdn.bucket.versions import VersionListing

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_DELETE_KEYS = 1000


def parse_xml(body: bytes, root_tag: str) -> ET.Element:
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML") from None
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    if root.tag != root_tag:
        raise S3Error("MalformedXML")
    return root


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """CompleteMultipartUpload body -> [(part number, etag)] in the given order."""
    root = parse_xml(body, "CompleteMultipartUpload")
    parts = []
    for part in root.findall("Part"):
        try:
            number = int((part.findtext("PartNumber") or "").strip())
        except ValueError:
            raise S3Error("MalformedXML") from None
        parts.append((number, (part.findtext("ETag") or "").strip()))
    return parts


def parse_create_bucket(body: bytes) -> str | None:
    """CreateBucketConfiguration body (optional) -> LocationConstraint."""
    if not body.strip():
        return None
    root = parse_xml(body, "CreateBucketConfiguration")
    return root.findtext("LocationConstraint")


# Characters XML 1.0 cannot carry literally: written as character references, as S3 does
# (a key may hold any of them; clients that list them ask for encoding-type=url).
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _enc(value: str, url: bool) -> str:
    if url:
        return escape(quote(value, safe="/"))
    return _XML_UNSAFE.sub(lambda m: f"&#x{ord(m.group()):x};", escape(value))


def _tag(name: str, value: str | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{escape(str(value))}</{name}>"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def list_buckets(buckets: Iterable[BucketState], owner: str, *, prefix: str | None = None,
                 next_token: str | None = None) -> bytes:
    out = [HEAD, f'<ListAllMyBucketsResult xmlns="{NS}">',
           f"<Owner><ID>{escape(owner)}</ID><DisplayName>{escape(owner)}</DisplayName></Owner>",
           "<Buckets>"]
    for b in buckets:
        out.append(f"<Bucket><Name>{escape(b.name)}</Name>"
                   f"<CreationDate>{iso8601(b.created)}</CreationDate></Bucket>")
    out.append("</Buckets>")
    out.append(_tag("ContinuationToken", next_token))
    out.append(_tag("Prefix", prefix))
    out.append("</ListAllMyBucketsResult>")
    return "".join(out).encode("utf-8")


def location(region: str) -> bytes:
    # us-east-1 is reported as an empty LocationConstraint, as S3 does.
    value = "" if region == "us-east-1" else escape(region)
    return f'{HEAD}<LocationConstraint xmlns="{NS}">{value}</LocationConstraint>'.encode()


def _contents(info: ObjectInfo, url: bool, owner: str | None) -> str:
    """One object of a listing; `owner` (the bucket's: objects have no owner of their own
    here, as on S3 with the default BucketOwnerEnforced) only when it is to be shown."""
    shown = "" if owner is None else (f"<Owner><ID>{escape(owner)}</ID>"
                                      f"<DisplayName>{escape(owner)}</DisplayName></Owner>")
    return (f"<Contents><Key>{_enc(info.key, url)}</Key>"
            f"<LastModified>{iso8601(info.last_modified)}</LastModified>"
            f"<ETag>&quot;{escape(info.etag)}&quot;</ETag><Size>{info.size}</Size>{shown}"
            "<StorageClass>STANDARD</StorageClass></Contents>")


def list_objects_v2(bucket: str, result: ListResult, *, prefix: str, delimiter: str,
                    max_keys: int, url: bool, start_after: str | None,
                    token: str | None, next_token: str | None, owner: str | None) -> bytes:
    out = [HEAD, f'<ListBucketResult xmlns="{NS}">', _tag("Name", bucket),
           f"<Prefix>{_enc(prefix, url)}</Prefix>"]
    if delimiter:
        out.append(f"<Delimiter>{_enc(delimiter, url)}</Delimiter>")
    out.append(_tag("MaxKeys", max_keys))
    if url:
        out.append("<EncodingType>url</EncodingType>")
    out.append(_tag("KeyCount", len(result.contents) + len(result.prefixes)))
    out.append(f"<IsTruncated>{_bool(result.truncated)}</IsTruncated>")
    if token is not None:
        out.append(_tag("ContinuationToken", token))
    if next_token is not None:
        out.append(_tag("NextContinuationToken", next_token))
    if start_after is not None:
        out.append(f"<StartAfter>{_enc(start_after, url)}</StartAfter>")
    out.extend(_contents(i, url, owner) for i in result.contents)
    out.extend(f"<CommonPrefixes><Prefix>{_enc(p, url)}</Prefix></CommonPrefixes>"
               for p in result.prefixes)
    out.append("</ListBucketResult>")
    return "".join(out).encode("utf-8")


def list_objects_v1(bucket: str, result: ListResult, *, prefix: str, delimiter: str,
                    max_keys: int, url: bool, marker: str, owner: str) -> bytes:
    """Version 1 listing. Its Prefix is the one given, never encoded: S3 encodes only the
    other names (botocore, which asks for url encoding unasked, decodes only those)."""
    out = [HEAD, f'<ListBucketResult xmlns="{NS}">', _tag("Name", bucket),
           f"<Prefix>{_enc(prefix, False)}</Prefix>", f"<Marker>{_enc(marker, url)}</Marker>"]
    if delimiter:
        out.append(f"<Delimiter>{_enc(delimiter, url)}</Delimiter>")
    out.append(_tag("MaxKeys", max_keys))
    if url:
        out.append("<EncodingType>url</EncodingType>")
    out.append(f"<IsTruncated>{_bool(result.truncated)}</IsTruncated>")
    if result.truncated and delimiter and result.next_after is not None:
        # NextMarker is sent only with a delimiter; clients use the last key otherwise.
        last = result.next_after.rstrip("\U0010ffff")
        out.append(f"<NextMarker>{_enc(last, url)}</NextMarker>")
    out.extend(_contents(i, url, owner) for i in result.contents)
    out.extend(f"<CommonPrefixes><Prefix>{_enc(p, url)}</Prefix></CommonPrefixes>"
               for p in result.prefixes)
    out.append("</ListBucketResult>")
    return "".join(out).encode("utf-8")


def delete_result(deleted: list[tuple[str, str | None, str | None, bool]],
                  errors: list[tuple[str, S3Error]], quiet: bool) -> bytes:
    """`deleted`: (key, version id asked for, version id deleted or made, delete marker)."""
    out = [HEAD, f'<DeleteResult xmlns="{NS}">']
    if not quiet:
        for key, asked, made, marker in deleted:
            extra = "" if made is None else (
                _tag("VersionId", asked) + (_tag("DeleteMarker", "true") if marker else "")
                + (_tag("DeleteMarkerVersionId", made) if marker else ""))
            out.append(f"<Deleted>{_tag('Key', key)}{extra}</Deleted>")
    out.extend(f"<Error>{_tag('Key', k)}{_tag('Code', e.code)}{_tag('Message', e.message)}"
               "</Error>" for k, e in errors)
    out.append("</DeleteResult>")
    return "".join(out).encode("utf-8")


def copy_result(info: ObjectInfo) -> bytes:
    return (f'{HEAD}<CopyObjectResult xmlns="{NS}">'
            f"<LastModified>{iso8601(info.last_modified)}</LastModified>"
            f"<ETag>&quot;{escape(info.etag)}&quot;</ETag></CopyObjectResult>").encode()


def copy_part_result(part: PartInfo) -> bytes:
    return (f'{HEAD}<CopyPartResult xmlns="{NS}">'
            f"<LastModified>{iso8601(part.last_modified)}</LastModified>"
            f"<ETag>&quot;{escape(part.etag)}&quot;</ETag>"
            f"{_checksums(part_checksum(part.checksums))}</CopyPartResult>").encode()


OBJECT_ATTRIBUTES = frozenset({"ETag", "Checksum", "ObjectParts", "StorageClass",
                               "ObjectSize"})


def object_attributes(info: ObjectInfo, wanted: set[str], *, marker: int,
                      max_parts: int) -> bytes:
    """GetObjectAttributes: the `wanted` ones of OBJECT_ATTRIBUTES (the ETag unquoted, as S3
    sends it there; ObjectParts only for a multipart object whose part sizes are known)."""
    out = [HEAD, f'<GetObjectAttributesResponse xmlns="{NS}">']
    if "ETag" in wanted:
        out.append(_tag("ETag", info.etag))
    checksum = _checksums(info.headers)
    if "Checksum" in wanted and checksum:
        out.append(f"<Checksum>{checksum}</Checksum>")
    if "ObjectParts" in wanted and info.part_sizes:
        numbered = list(enumerate(info.part_sizes, 1))[marker:]
        page = numbered[:max_parts]
        out.append(f"<ObjectParts>{_tag('PartsCount', info.parts)}"
                   f"{_tag('PartNumberMarker', marker)}")
        if page:
            out.append(_tag("NextPartNumberMarker", page[-1][0]))
        out.append(f"{_tag('MaxParts', max_parts)}"
                   f"{_tag('IsTruncated', len(numbered) > max_parts)}")
        out += [f"<Part>{_tag('PartNumber', n)}{_tag('Size', size)}</Part>" for n, size in page]
        out.append("</ObjectParts>")
    if "StorageClass" in wanted:
        out.append("<StorageClass>STANDARD</StorageClass>")
    if "ObjectSize" in wanted:
        out.append(_tag("ObjectSize", info.size))
    out.append("</GetObjectAttributesResponse>")
    return "".join(out).encode("utf-8")


def initiate_result(upload: UploadInfo) -> bytes:
    return (f'{HEAD}<InitiateMultipartUploadResult xmlns="{NS}">{_tag("Bucket", upload.bucket)}'
            f'{_tag("Key", upload.key)}{_tag("UploadId", upload.upload_id)}'
            "</InitiateMultipartUploadResult>").encode()


def complete_result(location_url: str, bucket: str, info: ObjectInfo) -> bytes:
    return (f'{HEAD}<CompleteMultipartUploadResult xmlns="{NS}">'
            f'{_tag("Location", location_url)}{_tag("Bucket", bucket)}{_tag("Key", info.key)}'
            f"<ETag>&quot;{escape(info.etag)}&quot;</ETag>{_checksums(info.headers)}"
            "</CompleteMultipartUploadResult>").encode()


def _checksums(stored: dict[str, str]) -> str:
    return "".join(_tag(name, value) for name, value in xml_fields(stored))


def list_parts(upload: UploadInfo, parts: list[PartInfo], *, marker: int, max_parts: int,
               truncated: bool) -> bytes:
    out = [HEAD, f'<ListPartsResult xmlns="{NS}">', _tag("Bucket", upload.bucket),
           _tag("Key", upload.key), _tag("UploadId", upload.upload_id),
           _tag("PartNumberMarker", marker)]
    if parts:
        out.append(_tag("NextPartNumberMarker", parts[-1].number))
    out += [_tag("MaxParts", max_parts), f"<IsTruncated>{_bool(truncated)}</IsTruncated>",
            "<StorageClass>STANDARD</StorageClass>"]
    for p in parts:
        out.append(f"<Part>{_tag('PartNumber', p.number)}"
                   f"<LastModified>{iso8601(p.last_modified)}</LastModified>"
                   f"<ETag>&quot;{p.etag}&quot;</ETag>{_tag('Size', p.size)}"
                   f"{_checksums(part_checksum(p.checksums))}</Part>")
    out.append("</ListPartsResult>")
    return "".join(out).encode("utf-8")


def list_uploads(bucket: str, uploads: list[UploadInfo], *, prefix: str, max_uploads: int,
                 truncated: bool) -> bytes:
    out = [HEAD, f'<ListMultipartUploadsResult xmlns="{NS}">', _tag("Bucket", bucket),
           "<KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>"]
    if uploads and truncated:
        out.append(_tag("NextKeyMarker", uploads[-1].key))
        out.append(_tag("NextUploadIdMarker", uploads[-1].upload_id))
    out += [f"<Prefix>{escape(prefix)}</Prefix>", _tag("MaxUploads", max_uploads),
            f"<IsTruncated>{_bool(truncated)}</IsTruncated>"]
    for u in uploads:
        out.append(f"<Upload>{_tag('Key', u.key)}{_tag('UploadId', u.upload_id)}"
                   f"<Initiated>{iso8601(u.initiated)}</Initiated>"
                   "<StorageClass>STANDARD</StorageClass></Upload>")
    out.append("</ListMultipartUploadsResult>")
    return "".join(out).encode("utf-8")


def parse_delete(body: bytes) -> tuple[list[tuple[str, str | None]], bool]:
    """DeleteObjects body -> ([(key, version id or None)], quiet)."""
    root = parse_xml(body, "Delete")
    objs = [(obj.findtext("Key") or "", obj.findtext("VersionId"))
            for obj in root.findall("Object")]
    if not objs or len(objs) > MAX_DELETE_KEYS:
        raise S3Error("MalformedXML")
    return objs, (root.findtext("Quiet") or "").strip().lower() == "true"


def parse_versioning(body: bytes) -> str:
    """PutBucketVersioning body -> "Enabled" or "Suspended"."""
    root = parse_xml(body, "VersioningConfiguration")
    status = (root.findtext("Status") or "").strip()
    if status not in ("Enabled", "Suspended"):
        raise S3Error("MalformedXML", "Status must be Enabled or Suspended.")
    if (root.findtext("MfaDelete") or "Disabled").strip() != "Disabled":
        raise S3Error("NotImplemented", "MFA delete is not implemented.")
    return status


def versioning(status: str | None) -> bytes:
    return (f'{HEAD}<VersioningConfiguration xmlns="{NS}">{_tag("Status", status)}'
            "</VersioningConfiguration>").encode()


def list_versions(bucket: str, listing: VersionListing, *, prefix: str, delimiter: str,
                  key_marker: str, version_id_marker: str, max_keys: int, url: bool,
                  owner: str) -> bytes:
    who = (f"<Owner><ID>{escape(owner)}</ID><DisplayName>{escape(owner)}</DisplayName>"
           "</Owner>")
    out = [HEAD, f'<ListVersionsResult xmlns="{NS}">', _tag("Name", bucket),
           f"<Prefix>{_enc(prefix, url)}</Prefix>",
           f"<KeyMarker>{_enc(key_marker, url)}</KeyMarker>",
           _tag("VersionIdMarker", version_id_marker)]
    if listing.truncated and listing.next_key is not None:
        out.append(f"<NextKeyMarker>{_enc(listing.next_key, url)}</NextKeyMarker>")
        out.append(_tag("NextVersionIdMarker", listing.next_version_id))
    out.append(_tag("MaxKeys", max_keys))
    if delimiter:
        out.append(f"<Delimiter>{_enc(delimiter, url)}</Delimiter>")
    if url:
        out.append("<EncodingType>url</EncodingType>")
    out.append(f"<IsTruncated>{_bool(listing.truncated)}</IsTruncated>")
    for v in listing.versions:
        head = (f"<Key>{_enc(v.key, url)}</Key>{_tag('VersionId', v.version_id)}"
                f"<IsLatest>{_bool(v.latest)}</IsLatest>"
                f"<LastModified>{iso8601(v.mtime_ns / 1e9)}</LastModified>")
        if v.info is None:
            out.append(f"<DeleteMarker>{head}{who}</DeleteMarker>")
        else:
            out.append(f"<Version>{head}<ETag>&quot;{escape(v.info.etag)}&quot;</ETag>"
                       f"<Size>{v.info.size}</Size><StorageClass>STANDARD</StorageClass>"
                       f"{who}</Version>")
    out.extend(f"<CommonPrefixes><Prefix>{_enc(p, url)}</Prefix></CommonPrefixes>"
               for p in listing.prefixes)
    out.append("</ListVersionsResult>")
    return "".join(out).encode("utf-8")


def tagging(tags: dict[str, str]) -> bytes:
    body = "".join(f"<Tag>{_tag('Key', k)}{_tag('Value', v)}</Tag>" for k, v in tags.items())
    return f'{HEAD}<Tagging xmlns="{NS}"><TagSet>{body}</TagSet></Tagging>'.encode()
