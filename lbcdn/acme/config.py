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


@dataclass(frozen=True)
class OnDemandConfig:
    """Certificates obtained at the first handshake for a name that has none (Caddy's
    on-demand TLS): for names the allow-list admits and the `ask` URL approves, at most
    `max_per_minute` new ones a minute. That handshake waits for the certificate."""
    directory: str = doc("The CA's ACME directory URL.", REQUIRED)
    allow: tuple[str, ...] = doc(
        "Names that may get a certificate: `shop.example.com`, or `*.example.com` for any "
        "one label below it. At least one.", REQUIRED)
    ask: str | None = doc(
        "URL asked first, as `GET ask?domain=NAME`: a 2xx answer approves the name, "
        "anything else (or no answer within 5 s) refuses it. Unset: the allow-list alone.",
        None)
    max_per_minute: int = doc("New certificates a minute, at most (refusals do not count).",
                              10, lo=1, hi=10_000)
    email: str | None = doc("Contact address of the ACME account.", None)
    challenge: Literal["http-01", "tls-alpn-01"] | None = doc(
        "Unset: `tls-alpn-01` when this listener is on port 443, else `http-01`.", None)
    ca_bundle: str | None = doc("PEM bundle to verify the CA's API with.", None)
    eab: EabConfig | None = doc("External account binding, for CAs that need one.", None)
    wait_s: float = doc("How long a handshake waits for its certificate before it goes on "
                        "without (and fails).", 30.0, lo=0.1)
