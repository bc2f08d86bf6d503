"""A small RFC 8555 client on aiohttp and `cryptography`: account, order, authorizations,
challenges, finalize, download.

Why our own and not certbot's `acme` package: that one is synchronous (requests) and would need
a thread per issuance plus josepy and pyOpenSSL; what lbcdn needs of RFC 8555 is one key type
(ECDSA P-256, ES256), JWS signing, and a dozen requests, which fit in this file on the libraries
the daemon already has, on its own event loop.

Rules:
- Every failure raises AcmeError with a message that says which step failed and what the CA
  said (its problem document), or what was wrong with its answer: a directory that is not an
  ACME directory, a body that is not JSON, a missing field.
- A `badNonce` problem is retried with the fresh nonce the CA sent (RFC 8555 6.5); nothing
  else is retried here (the manager retries whole issuances with backoff).
- Challenge answers are put up by the caller (`Solver`), all of them before the CA is told to
  look at any, and taken down afterwards whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

POLL_INTERVAL_S = 0.5
POLL_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 30.0
MAX_BODY_BYTES = 1 << 20


class AcmeError(Exception):
    """An issuance step that failed; the message says which and why."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key() -> ec.EllipticCurvePrivateKey:
    """Account and certificate keys: ECDSA P-256 (cheaper handshakes than RSA)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an ECDSA key")
    return key


def jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big"))}


def thumbprint(key: ec.EllipticCurvePrivateKey) -> str:
    """RFC 7638: SHA-256 of the JWK's required members, sorted, no white space."""
    text = json.dumps(jwk(key), sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(text.encode()).digest())


def key_authorization(token: str, key: ec.EllipticCurvePrivateKey) -> str:
    return f"{token}.{thumbprint(key)}"


def dns01_value(key_auth: str) -> str:
    """The TXT value of `_acme-challenge.NAME` (RFC 8555 8.4)."""
    return b64url(hashlib.sha256(key_auth.encode()).digest())


def sign(key: ec.EllipticCurvePrivateKey, protected: dict[str, Any],
         payload: object | None) -> dict[str, str]:
    """A flattened JWS (ES256); `payload` None is POST-as-GET (an empty payload)."""
    prot = b64url(json.dumps(protected).encode())
    body = "" if payload is None else b64url(json.dumps(payload).encode())
    der = key.sign(f"{prot}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return {"protected": prot, "payload": body,
            "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}


def eab_binding(kid: str, hmac_key: str, account: ec.EllipticCurvePrivateKey,
                url: str) -> dict[str, str]:
    """The externalAccountBinding JWS (RFC 8555 7.3.4): the account key, MACed (HS256)."""
    prot = b64url(json.dumps({"alg": "HS256", "kid": kid, "url": url}).encode())
    body = b64url(json.dumps(jwk(account)).encode())
    try:
        mac_key = b64url_decode(hmac_key)
    except ValueError as exc:
        raise AcmeError(f"eab.hmac_key is not base64url: {exc}") from None
    mac = hmac.new(mac_key, f"{prot}.{body}".encode(), hashlib.sha256).digest()
    return {"protected": prot, "payload": body, "signature": b64url(mac)}


def csr_der(key: ec.EllipticCurvePrivateKey, names: Sequence[str]) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])).add_extension(
        x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Pending:
    """A challenge to answer: `kind` (http-01, dns-01, tls-alpn-01) for `name` (a wildcard
    authorization's name is its base name, `wildcard` True)."""
    kind: str
    name: str
    token: str
    key_authorization: str
    url: str
    wildcard: bool


class Solver(Protocol):
    async def present(self, pending: Sequence[Pending]) -> None:
        """Put every answer up, visible wherever the CA may look, before returning."""
        ...

    async def remove(self, pending: Sequence[Pending]) -> None:
        ...


def _problem(body: object) -> str:
    if isinstance(body, dict):
        detail = body.get("detail") or ""
        kind = str(body.get("type") or "").rpartition(":")[2]
        subs = body.get("subproblems")
        extra = ""
        if isinstance(subs, list):
            extra = "; ".join(f"{s.get('identifier', {}).get('value', '?')}: {s.get('detail')}"
                              for s in subs if isinstance(s, dict))
        return f"{kind}: {detail}" + (f" ({extra})" if extra else "") if kind else str(detail)
    return str(body)[:200]


class AcmeClient:
    """One CA, one account key. Use as `async with AcmeClient(...) as c: await c.issue(...)`."""

    def __init__(self, directory: str, account_key: ec.EllipticCurvePrivateKey, *,
                 ca_bundle: str | None = None, email: str | None = None,
                 eab: tuple[str, str] | None = None) -> None:
        self.directory_url = directory
        self.key = account_key
        self.email = email
        self.eab = eab
        self.ca_bundle = ca_bundle
        self.kid: str | None = None
        self._nonce: str | None = None
        self._dir: dict[str, Any] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AcmeClient:
        try:
            ctx = ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise AcmeError(f"ca_bundle {self.ca_bundle!r} cannot be used: {exc}") from None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            headers={"User-Agent": "lbcdn-acme"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    # -- transport -----------------------------------------------------------------------
    async def _request(self, method: str, url: str, what: str,
                       body: object | None = None) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        headers = {"Content-Type": "application/jose+json"} if body is not None else {}
        try:
            async with self._session.request(method, url, data=None if body is None else
                                             json.dumps(body), headers=headers) as resp:
                data = await resp.content.read(MAX_BODY_BYTES + 1)
                if len(data) > MAX_BODY_BYTES:
                    raise AcmeError(f"{what}: the CA's answer is larger than "
                                    f"{MAX_BODY_BYTES} bytes")
                nonce = resp.headers.get("Replay-Nonce")
                if nonce:
                    self._nonce = nonce
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, data
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise AcmeError(f"{what}: cannot reach the CA at {url}: "
                            f"{exc or type(exc).__name__}") from None

    @staticmethod
    def _json(data: bytes, what: str) -> dict[str, Any]:
        try:
            out = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise AcmeError(f"{what}: the CA's answer is not JSON: {data[:80]!r}") from None
        if not isinstance(out, dict):
            raise AcmeError(f"{what}: the CA's answer is not a JSON object")
        return out

    async def directory(self) -> dict[str, Any]:
        if not self._dir:
            status, _, data = await self._request("GET", self.directory_url, "directory")
            if status != 200:
                raise AcmeError(f"directory: {self.directory_url} answered {status}; "
                                "is it an ACME directory URL?")
            try:
                found = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                found = None
            missing = [k for k in ("newNonce", "newAccount", "newOrder")
                       if not isinstance(found, dict) or not isinstance(found.get(k), str)]
            if missing:
                raise AcmeError(f"directory: {self.directory_url} is not an ACME directory "
                                f"(no {', '.join(missing)})")
            assert isinstance(found, dict)
            self._dir = found
        return self._dir

    async def _fresh_nonce(self) -> str:
        url = (await self.directory())["newNonce"]
        status, headers, _ = await self._request("HEAD", url, "newNonce")
        nonce = headers.get("replay-nonce")
        if not nonce:
            raise AcmeError(f"newNonce: the CA answered {status} without a Replay-Nonce")
        return nonce

    async def post(self, url: str, payload: object | None, what: str, *,
                   use_jwk: bool = False) -> tuple[int, dict[str, str], bytes]:
        """A signed POST (payload None: POST-as-GET); raises AcmeError on a problem answer."""
        for attempt in range(3):
            nonce = self._nonce or await self._fresh_nonce()
            self._nonce = None
            protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
            if use_jwk or self.kid is None:
                protected["jwk"] = jwk(self.key)
            else:
                protected["kid"] = self.kid
            status, headers, data = await self._request(
                "POST", url, what, sign(self.key, protected, payload))
            if status < 400:
                return status, headers, data
            try:
                problem: object = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                problem = data.decode("utf-8", "replace")
            if isinstance(problem, dict) and str(problem.get("type", "")).endswith(
                    ":badNonce") and attempt < 2:
                continue
            raise AcmeError(f"{what}: the CA refused ({status}): {_problem(problem)}")
        raise AssertionError("unreachable")

    # -- RFC 8555 steps ------------------------------------------------------------------
    async def account(self) -> str:
        """Create (or find) the account of our key; its URL."""
        d = await self.directory()
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if self.email:
            payload["contact"] = [f"mailto:{self.email}"]
        if self.eab is not None:
            payload["externalAccountBinding"] = eab_binding(
                self.eab[0], self.eab[1], self.key, d["newAccount"])
        elif (d.get("meta") or {}).get("externalAccountRequired"):
            raise AcmeError("newAccount: this CA needs external account binding (set `eab`)")
        _, headers, _ = await self.post(d["newAccount"], payload, "newAccount", use_jwk=True)
        kid = headers.get("location")
        if not kid:
            raise AcmeError("newAccount: the CA gave no account URL (Location)")
        self.kid = kid
        return kid

    async def renewal_info(self, cert_pem: bytes) -> tuple[float, float] | None:
        """The renewal window (start, end, Unix seconds) the CA suggests for the leaf of
        `cert_pem` (ACME Renewal Information, RFC 9773), or None when the CA offers none."""
        base = (await self.directory()).get("renewalInfo")
        if not isinstance(base, str):
            return None
        url = f"{base.rstrip('/')}/{ari_cert_id(cert_pem)}"
        status, _, data = await self._request("GET", url, "renewalInfo")
        if status != 200:
            raise AcmeError(f"renewalInfo: the CA answered {status}")
        window = self._json(data, "renewalInfo").get("suggestedWindow")
        try:
            assert isinstance(window, dict)
            start = datetime.datetime.fromisoformat(str(window["start"]).replace("Z", "+00:00"))
            end = datetime.datetime.fromisoformat(str(window["end"]).replace("Z", "+00:00"))
        except (AssertionError, KeyError, ValueError):
            raise AcmeError("renewalInfo: no suggestedWindow with start and end") from None
        return start.timestamp(), end.timestamp()

    async def get(self, url: str, what: str) -> dict[str, Any]:
        _, _, data = await self.post(url, None, what)
        return self._json(data, what)

    async def issue(self, names: Sequence[str], kind: str, cert_key: ec.EllipticCurvePrivateKey,
                    solver: Solver) -> str:
        """Order a certificate for `names`, answering with `kind` challenges; the PEM chain."""
        if self.kid is None:
            await self.account()
        d = await self.directory()
        _, headers, data = await self.post(d["newOrder"], {"identifiers": [
            {"type": "dns", "value": n} for n in names]}, "newOrder")
        order = self._json(data, "newOrder")
        order_url = headers.get("location")
        if not order_url or not isinstance(order.get("authorizations"), list) or \
                not isinstance(order.get("finalize"), str):
            raise AcmeError("newOrder: the CA's order lacks Location, authorizations or "
                            "finalize")
        pending: list[Pending] = []
        for url in order["authorizations"]:
            authz = await self.get(url, "authorization")
            if authz.get("status") == "valid":
                continue
            ident = (authz.get("identifier") or {}).get("value")
            chosen = [c for c in authz.get("challenges") or [] if isinstance(c, dict) and
                      c.get("type") == kind]
            if not chosen or not isinstance(ident, str):
                offered = ", ".join(str(c.get("type")) for c in authz.get("challenges") or []
                                    if isinstance(c, dict))
                raise AcmeError(f"authorization for {ident}: the CA offers no {kind} "
                                f"challenge (offers: {offered or 'none'})")
            c = chosen[0]
            if not isinstance(c.get("token"), str) or not isinstance(c.get("url"), str):
                raise AcmeError(f"authorization for {ident}: challenge without token or url")
            pending.append(Pending(kind, ident, c["token"],
                                   key_authorization(c["token"], self.key), c["url"],
                                   bool(authz.get("wildcard"))))
        if pending:
            await solver.present(pending)
            try:
                for p in pending:
                    await self.post(p.url, {}, f"challenge {p.kind} for {p.name}")
                for p in pending:
                    await self._poll(p, order["authorizations"])
            finally:
                await solver.remove(pending)
        order = await self._wait_order(order_url, ("ready", "valid"), "order")
        if order.get("status") == "ready":
            await self.post(order["finalize"], {"csr": b64url(csr_der(cert_key, names))},
                            "finalize")
            order = await self._wait_order(order_url, ("valid",), "finalize")
        cert_url = order.get("certificate")
        if not isinstance(cert_url, str):
            raise AcmeError("finalize: the valid order has no certificate URL")
        _, _, pem = await self.post(cert_url, None, "certificate download")
        return check_chain(pem, names, cert_key)

    async def _poll(self, p: Pending, authz_urls: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + POLL_TIMEOUT_S
        what = f"challenge {p.kind} for {p.name}"
        while True:
            ch = await self.get(p.url, what)
            status = ch.get("status")
            if status == "valid":
                return
            if status == "invalid":
                raise AcmeError(f"{what} failed: {_problem(ch.get('error') or 'no reason')}")
            if loop.time() > deadline:
                raise AcmeError(f"{what}: still {status} after {POLL_TIMEOUT_S:.0f} s")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def _wait_order(self, url: str, wanted: Sequence[str], what: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + POLL_TIMEOUT_S
        while True:
            order = await self.get(url, what)
            status = order.get("status")
            if status in wanted:
                return order
            if status == "invalid":
                raise AcmeError(f"{what}: the order is invalid: "
                                f"{_problem(order.get('error') or 'no reason')}")
            if loop.time() > deadline:
                raise AcmeError(f"{what}: the order is still {status} after "
                                f"{POLL_TIMEOUT_S:.0f} s")
            await asyncio.sleep(POLL_INTERVAL_S)


def ari_cert_id(cert_pem: bytes) -> str:
    """RFC 9773's certificate id: the leaf's authority key identifier and serial number (its
    DER content octets), each base64url, joined by a dot."""
    leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no authority key identifier") from None
    if aki.key_identifier is None:
        raise ValueError("the certificate's authority key identifier has no key id")
    serial = leaf.serial_number
    der = serial.to_bytes((serial.bit_length() + 8) // 8, "big")   # a leading 0 if needed
    return f"{b64url(aki.key_identifier)}.{b64url(der)}"


def check_chain(pem: bytes, names: Sequence[str], key: ec.EllipticCurvePrivateKey) -> str:
    """The downloaded chain as text, once it is PEM certificates whose leaf is for our key
    and names; AcmeError otherwise (nothing is stored from a bad answer)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise AcmeError("certificate download: the CA's answer is not a PEM chain") from None
    leaf = certs[0]
    if leaf.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo):
        raise AcmeError("certificate download: the certificate is not for our key")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        got = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        got = set()
    if not {n.lower() for n in names} <= got:
        raise AcmeError(f"certificate download: the certificate names {sorted(got)}, "
                        f"not {list(names)}")
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)
