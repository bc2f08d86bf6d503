"""Configuration of ACME certificates (`listeners[].tls.acme[]`). Data only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lbcdn.configkit.fields import REQUIRED, doc

Challenge = Literal["http-01", "tls-alpn-01", "dns-01"]


@dataclass(frozen=True)
class EabConfig:
    """External account binding (RFC 8555 7.3.4), for CAs that tie ACME accounts to an
    account of theirs."""
    kid: str = doc("The key identifier the CA gave.", REQUIRED)
    hmac_key: str = doc("The MAC key the CA gave, base64url as given.", REQUIRED)


@dataclass(frozen=True)
class AcmeConfig:
    """One certificate obtained and renewed from an ACME CA for `names`."""
    directory: str = doc(
        "The CA's ACME directory URL (Let's Encrypt: "
        "`https://acme-v02.api.letsencrypt.org/directory`).", REQUIRED)
    names: tuple[str, ...] = doc(
        "The DNS names of the certificate (the first is its subject); `*.example.com` "
        "needs dns-01. At least one.", REQUIRED)
    email: str | None = doc("Contact address of the ACME account.", None)
    challenge: Challenge | None = doc(
        "How the CA checks the names are ours. Unset: `dns-01` when lbcdn's own DNS is "
        "authoritative for every name, else `tls-alpn-01` when this listener is on port 443, "
        "else `http-01` (answered on every plain listener).", None)
    ca_bundle: str | None = doc(
        "PEM bundle to verify the CA's API with (a private or test CA). Unset: the "
        "system's.", None)
    eab: EabConfig | None = doc("External account binding, for CAs that need one.", None)
    retry_initial_s: float = doc(
        "Pause after a failed issuance or renewal; doubles on each further failure, up to "
        "an hour (and never more than a third of the time the current certificate has "
        "left).",
        60.0, lo=0.1)
