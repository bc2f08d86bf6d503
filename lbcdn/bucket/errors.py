"""S3 errors: one exception type carrying the S3 error code, its HTTP status and message.

Rules: every failure the bucket origin reports to a client is an `S3Error`; the status for a
code lives in `STATUS` here (one place), and `render_error` produces the exact XML body S3 sends:
`<Error><Code/><Message/><Resource/><RequestId/></Error>`. Pure: no I/O.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

# Status per S3 error code, as documented in the S3 API reference ("Error responses").
STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidPartNumber": 416,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "InvalidURI": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "MissingSecurityHeader": 400,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NoSuchVersion": 404,
    "NoSuchWebsiteConfiguration": 404,
    "NotImplemented": 501,
    "NotModified": 304,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "SignatureDoesNotMatch": 403,
    "XAmzContentSHA256Mismatch": 400,
    "InvalidObjectName": 400,
    "ServiceUnavailable": 503,
}

DEFAULT_MESSAGES: dict[str, str] = {
    "AccessDenied": "Access Denied",
    "BadDigest": "The Content-MD5 you specified did not match what we received.",
    "BucketAlreadyOwnedByYou":
        "Your previous request to create the named bucket succeeded and you already own it.",
    "BucketNotEmpty": "The bucket you tried to delete is not empty",
    "IncompleteBody": "You did not provide the number of bytes specified by the "
                      "Content-Length HTTP header.",
    "InternalError": "We encountered an internal error. Please try again.",
    "InvalidAccessKeyId": "The AWS Access Key Id you provided does not exist in our records.",
    "InvalidBucketName": "The specified bucket is not valid.",
    "InvalidDigest": "The Content-MD5 you specified is not valid.",
    "InvalidPart": "One or more of the specified parts could not be found. The part may not "
                   "have been uploaded, or the specified entity tag may not match the part's "
                   "entity tag.",
    "InvalidPartOrder": "The list of parts was not in ascending order. The parts list must be "
                        "specified in order by part number.",
    "InvalidRange": "The requested range is not satisfiable",
    "InvalidPartNumber": "The requested partnumber is not satisfiable",
    "MalformedXML": "The XML you provided was not well-formed or did not validate against "
                    "our published schema.",
    "MethodNotAllowed": "The specified method is not allowed against this resource.",
    "MissingContentLength": "You must provide the Content-Length HTTP header.",
    "NoSuchBucket": "The specified bucket does not exist",
    "NoSuchKey": "The specified key does not exist.",
    "NoSuchUpload": "The specified upload does not exist. The upload ID may be invalid, or "
                    "the upload may have been aborted or completed.",
    "NoSuchVersion": "The specified version does not exist.",
    "NoSuchWebsiteConfiguration": "The specified bucket does not have a website configuration",
    "NotImplemented": "A header you provided implies functionality that is not implemented.",
    "PreconditionFailed": "At least one of the pre-conditions you specified did not hold",
    "RequestTimeTooSkewed": "The difference between the request time and the current time "
                            "is too large.",
    "SignatureDoesNotMatch": "The request signature we calculated does not match the "
                             "signature you provided. Check your key and signing method.",
    "XAmzContentSHA256Mismatch": "The provided 'x-amz-content-sha256' header does not match "
                                 "what was computed.",
    "EntityTooSmall": "Your proposed upload is smaller than the minimum allowed object size.",
    "KeyTooLongError": "Your key is too long",
}


class S3Error(Exception):
    """A client-visible S3 failure. `status` defaults from the code's entry in `STATUS`."""

    def __init__(self, code: str, message: str | None = None, *, status: int | None = None,
                 resource: str = "", extra: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.code = code
        self.message = message if message is not None else DEFAULT_MESSAGES.get(code, code)
        self.status = status if status is not None else STATUS.get(code, 400)
        self.resource = resource
        # Extra child elements S3 adds for some codes (e.g. BucketName, Key, UploadId).
        self.extra: dict[str, str] = dict(extra or {})
        # Response headers S3 sends with some errors (x-amz-delete-marker on a deleted key).
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(f"{self.code}: {self.message}")

    def with_resource(self, resource: str) -> S3Error:
        """Fill the resource when the raiser did not know it; returns self."""
        if not self.resource:
            self.resource = resource
        return self


def render_error(err: S3Error, request_id: str, host_id: str = "") -> bytes:
    """The XML body S3 sends with an error response."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<Error>',
             f"<Code>{escape(err.code)}</Code>",
             f"<Message>{escape(err.message)}</Message>"]
    for name, value in err.extra.items():
        parts.append(f"<{name}>{escape(value)}</{name}>")
    parts.append(f"<Resource>{escape(err.resource)}</Resource>")
    parts.append(f"<RequestId>{escape(request_id)}</RequestId>")
    if host_id:
        parts.append(f"<HostId>{escape(host_id)}</HostId>")
    parts.append("</Error>")
    return "".join(parts).encode("utf-8")
