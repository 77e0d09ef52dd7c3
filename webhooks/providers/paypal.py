"""PayPal: RSA signature over ``"<transmission id>|<transmission time>|<webhook id>|<crc32 of body>"``.

Offline verification as in PayPal's SDKs (providers.md §4 B), hardened:

* the certificate is fetched only over https from PayPal's API hosts (the
  sandbox host only when the source allows it), without following redirects,
  and cached by URL;
* it must chain to a trusted root (the system trust store by default), be
  valid now, and have a subject CN ending in ``.paypal.com``;
* the signature is RSA PKCS#1 v1.5 with SHA-256 (or SHA-1 when
  ``PAYPAL-AUTH-ALGO`` says ``SHA1withRSA``).

PayPal has no shared secret. The one per-endpoint input to the signature is the
**webhook id** of the tenant's PayPal subscription, so the stored "secret" of a
PayPal source is that webhook id; rotation (current + previous secret) covers a
re-created subscription while PayPal still retries events signed for the old one.

The network fetch and the trust anchors are injectable (``PayPalProvider(fetcher=…,
trust_anchors=…)``) so tests never touch the network.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from .base import (
    EventInfo,
    InboundRequest,
    InvalidOptions,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    check_timestamp_age,
    require_header,
    tolerance_seconds,
)

TRANSMISSION_ID = "PAYPAL-TRANSMISSION-ID"
TRANSMISSION_TIME = "PAYPAL-TRANSMISSION-TIME"
TRANSMISSION_SIG = "PAYPAL-TRANSMISSION-SIG"
CERT_URL = "PAYPAL-CERT-URL"
AUTH_ALGO = "PAYPAL-AUTH-ALGO"

LIVE_HOSTS = frozenset({"api.paypal.com"})
SANDBOX_HOSTS = frozenset({"api.sandbox.paypal.com"})
SIMULATOR_WEBHOOK_ID = "WEBHOOK_ID"
CN_SUFFIX = ".paypal.com"

FETCH_TIMEOUT = 5.0  # seconds
MAX_CERT_BYTES = 64 * 1024
CACHE_TTL = 24 * 3600.0  # a certificate URL names one certificate; PayPal rotates by publishing a new URL
CACHE_MAX_ENTRIES = 32
# Fetches of not-yet-cached URLs allowed per minute: random cert URLs on PayPal's host must not turn us
# into a request amplifier towards PayPal. Counted per source (the webhook ids it verifies against):
# anyone who knows one PayPal ingest URL can spend its allowance with made-up URLs, and must not spend
# the other sources' with it, which would refuse their genuine events for as long as they keep at it.
FETCHES_PER_MINUTE = 20
# All sources together: the bound on what we send to PayPal, whatever the number of sources.
FETCHES_PER_MINUTE_ALL_SOURCES = 200

_ALGORITHMS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256withrsa": hashes.SHA256,
    "sha1withrsa": hashes.SHA1,
}
DEFAULT_ALGORITHM = "SHA256withRSA"  # what the SDKs assume when nothing else is said
_WEBHOOK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)

Fetcher = Callable[[str], bytes]
TrustAnchors = Sequence[x509.Certificate] | Callable[[], Sequence[x509.Certificate]]


class CertificateFetchError(Exception):
    """The certificate could not be fetched (network, status, size, refused URL)."""


# --- network and trust defaults ---------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # a 3xx becomes an HTTPError: never follow PayPal's URL elsewhere


def allowed_cert_url(url: str, allow_sandbox: bool) -> str | None:
    """None if ``url`` may be fetched, otherwise the reason (safe to show to the tenant)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return "the certificate URL cannot be parsed"
    if parts.scheme != "https":
        return "the certificate URL is not https"
    if parts.username is not None or parts.password is not None or port not in (None, 443):
        return "the certificate URL has credentials or a non-standard port"
    if host in LIVE_HOSTS:
        return None
    if host in SANDBOX_HOSTS:
        return (
            None
            if allow_sandbox
            else "the certificate is from PayPal's sandbox; turn on the source's 'Accept sandbox events' "
            "(allow_sandbox) to accept it"
        )
    return (
        f"the certificate URL's host is not one of PayPal's API hosts ({', '.join(sorted(LIVE_HOSTS | SANDBOX_HOSTS))})"
    )


def default_fetcher(url: str) -> bytes:
    """GET ``url`` over https from PayPal's hosts only, with a short timeout and a size cap."""
    if allowed_cert_url(url, allow_sandbox=True) is not None:
        raise CertificateFetchError("refused URL")
    opener = urllib.request.build_opener(
        _NoRedirects(), urllib.request.HTTPSHandler(context=ssl.create_default_context())
    )
    request = urllib.request.Request(  # noqa: S310 - https on an allowlisted host, checked above
        url, headers={"User-Agent": "Hookline-webhook-verifier", "Accept": "*/*"}
    )
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT) as response:
            if response.status != 200:
                raise CertificateFetchError(f"HTTP {response.status}")
            data = response.read(MAX_CERT_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CertificateFetchError(exc.__class__.__name__) from None
    if len(data) > MAX_CERT_BYTES:
        raise CertificateFetchError("response too large")
    return data


def parse_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle that cryptography can read (unreadable ones are skipped)."""
    certificates = []
    for block in _PEM_BLOCK.findall(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old roots in system stores have non-RFC 5280 serials
            try:
                certificates.append(x509.load_pem_x509_certificate(block))
            except Exception:  # noqa: S112 - ValueError, InvalidVersion…: skip what cannot be read
                continue
    return certificates


_system_anchors: list[x509.Certificate] | None = None
_system_anchors_lock = threading.Lock()


def system_trust_anchors() -> list[x509.Certificate]:
    """The roots of the machine's trust store (OpenSSL's default CA file/dir), read once."""
    global _system_anchors
    with _system_anchors_lock:
        if _system_anchors is None:
            paths = ssl.get_default_verify_paths()
            anchors: list[x509.Certificate] = []
            for path in (os.environ.get(paths.openssl_cafile_env), paths.cafile, paths.openssl_cafile):
                if path and os.path.isfile(path):
                    with open(path, "rb") as handle:
                        anchors = parse_pem_certificates(handle.read())
                    if anchors:
                        break
            if not anchors:
                for directory in (os.environ.get(paths.openssl_capath_env), paths.capath, paths.openssl_capath):
                    if directory and os.path.isdir(directory):
                        for name in sorted(os.listdir(directory)):
                            full = os.path.join(directory, name)
                            if os.path.isfile(full):
                                with open(full, "rb") as handle:
                                    anchors.extend(parse_pem_certificates(handle.read()))
                    if anchors:
                        break
            _system_anchors = anchors
        return _system_anchors


def _require_ca(policy: Any, certificate: x509.Certificate, extension: Any) -> None:
    if extension is None or not extension.ca:
        raise ValueError("basicConstraints.cA is not set")


def _key_cert_sign_if_present(policy: Any, certificate: x509.Certificate, extension: Any) -> None:
    if extension is not None and not extension.key_cert_sign:
        raise ValueError("keyUsage does not allow certificate signing")


# Issuers must be CAs (and allowed to sign certificates when they say so); the end-entity
# certificate is a signing certificate, not a TLS client, so no EKU or SAN is demanded of it.
CA_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _require_ca)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _key_cert_sign_if_present)
)
EE_POLICY = ExtensionPolicy.permit_all()


class _CertificateCache:
    """URL → parsed certificates, with a TTL, a size bound and a budget for new fetches."""

    def __init__(self, fetcher: Fetcher):
        self._fetcher = fetcher
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, list[x509.Certificate]]] = {}
        self._recent_fetches: list[tuple[float, str]] = []  # (when, for which source)

    def get(self, url: str, source: str = "") -> list[x509.Certificate]:
        """The certificates at ``url``; a fetch is counted against ``source`` (see FETCHES_PER_MINUTE)."""
        clock = time.monotonic()
        with self._lock:
            entry = self._entries.get(url)
            if entry and entry[0] > clock:
                return entry[1]
            self._recent_fetches = [(t, owner) for t, owner in self._recent_fetches if t > clock - 60]
            if sum(owner == source for _, owner in self._recent_fetches) >= FETCHES_PER_MINUTE:
                raise CertificateFetchError("too many certificate fetches for this source in the last minute")
            if len(self._recent_fetches) >= FETCHES_PER_MINUTE_ALL_SOURCES:
                raise CertificateFetchError("too many certificate fetches in the last minute")
            self._recent_fetches.append((clock, source))
        data = self._fetcher(url)  # outside the lock: a slow fetch must not block cached lookups
        if not isinstance(data, bytes):
            raise CertificateFetchError("fetcher returned no bytes")
        certificates = parse_pem_certificates(data)
        if not certificates:
            raise CertificateFetchError("no PEM certificate in the response")
        with self._lock:
            if len(self._entries) >= CACHE_MAX_ENTRIES:
                self._entries.pop(min(self._entries, key=lambda k: self._entries[k][0]))
            self._entries[url] = (clock + CACHE_TTL, certificates)
        return certificates


# --- the provider ---------------------------------------------------------------------------


def crc32_decimal(body: bytes) -> str:
    """Unsigned IEEE CRC-32 (zlib's) of the raw body, in decimal, as PayPal signs it."""
    return str(binascii.crc32(body) & 0xFFFFFFFF)


def signed_message(transmission_id: str, transmission_time: str, webhook_id: str, body: bytes) -> bytes:
    text = f"{transmission_id}|{transmission_time}|{webhook_id}|{crc32_decimal(body)}"
    return text.encode("utf-8", "surrogatepass")


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class PayPalProvider(Provider):
    """PayPal REST webhooks, verified offline against PayPal's signing certificate."""

    kind = "paypal"
    label = "PayPal"
    cannot_sign_reason = (
        "PayPal signs webhooks with its own private key; Hookline only holds the webhook id and cannot sign "
        "test requests. Use PayPal's Webhooks Simulator instead, with the source's 'Accept Webhooks Simulator events' "
        "(accept_simulator) turned on while you test."
    )
    secret_help = (
        "Not a secret: the Webhook ID of your PayPal webhook (developer.paypal.com → Apps & Credentials → "
        "your app → Webhooks; the ID column, e.g. 4JH86294D6297924G). PayPal signs every event for that id. "
        "After re-creating the webhook, add the new id and keep the old one as the previous secret until "
        "PayPal stops retrying (3 days)."
    )
    secret_generated_by_us = False
    setup_steps = (
        "developer.paypal.com → Apps & Credentials → your app (Sandbox or Live) → Webhooks → Add Webhook: the "
        "ingest URL as Webhook URL, choose the event types, Save.",
        "Copy the Webhook ID PayPal then lists for it into this source (Set the signing secret): PayPal signs "
        "every event for that id (it is not a secret).",
        "For a Sandbox app, turn on Accept sandbox events (Edit).",
        "Hookline cannot sign PayPal requests, so there is no test sender: use PayPal's Webhooks Simulator with "
        "Accept Webhooks Simulator events turned on while you test.",
    )
    options = (
        ProviderOption(
            name="allow_sandbox",
            label="Accept sandbox events",
            help_text="Also accept certificates from api.sandbox.paypal.com (sandbox apps). Leave off for live.",
            default=False,
            kind="bool",
        ),
        ProviderOption(
            name="accept_simulator",
            label="Accept Webhooks Simulator events",
            help_text=(
                "Also accept events signed for the literal webhook id WEBHOOK_ID, which PayPal's simulator uses. "
                "Anyone can make the simulator post to any URL: turn this on only while testing."
            ),
            default=False,
            kind="bool",
        ),
        ProviderOption(
            name="tolerance",
            label="Transmission time tolerance (seconds)",
            help_text=(
                "Reject transmissions whose PAYPAL-TRANSMISSION-TIME is further than this from now; 0 (default) "
                "turns the check off, as PayPal documents no tolerance."
            ),
            default=0,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "the PAYPAL-TRANSMISSION-TIME header"
    docs_verifies = (
        "PAYPAL-TRANSMISSION-SIG: base64 RSA PKCS#1 v1.5 signature (SHA256withRSA, or SHA1withRSA when "
        'PAYPAL-AUTH-ALGO says so) over "<transmission id>|<transmission time>|<webhook id>|<decimal CRC-32 '
        "of the raw body>\", where the webhook id is the source's secret (any of current/previous; the literal "
        "WEBHOOK_ID too when `accept_simulator` is on, and only then: it is refused as the secret). The certificate "
        "comes from PAYPAL-CERT-URL, fetched "
        "only over https from api.paypal.com (api.sandbox.paypal.com with `allow_sandbox`) and cached by URL; it "
        "must chain to a root of the system trust store, be valid now and have a subject CN ending in "
        ".paypal.com. Optional `tolerance` on PAYPAL-TRANSMISSION-TIME (PayPal documents none [UNCONFIRMED]). "
        "The test sender cannot sign PayPal requests (PayPal's private key). A signature reused with a "
        "different body is refused (the CRC-32 it covers can be forged, so its PAYPAL-TRANSMISSION-ID is "
        "single-use across the organization's PayPal sources)."
    )
    event_id_from = "id in the body"
    docs_event_id = "payload `id` (WH-…), the same on every retry"
    docs_event_type = "payload `event_type`, e.g. PAYMENT.CAPTURE.COMPLETED"

    def __init__(self, fetcher: Fetcher | None = None, trust_anchors: TrustAnchors | None = None):
        self._certificates = _CertificateCache(fetcher or default_fetcher)
        self._trust_anchors = trust_anchors

    # -- configuration --

    def clean_secret(self, secret: str) -> str:
        secret = super().clean_secret(secret)
        if not _WEBHOOK_ID.fullmatch(secret):
            raise InvalidOptions(
                "enter the PayPal Webhook ID (letters and digits, e.g. 4JH86294D6297924G), not the client secret"
            )
        if secret == SIMULATOR_WEBHOOK_ID:
            raise InvalidOptions(
                "WEBHOOK_ID is the Webhooks Simulator's id, which anyone can have the simulator send events for: "
                "enter your webhook's own ID, and turn on accept_simulator (Accept Webhooks Simulator events) while testing"
            )
        return secret

    # -- verification --

    def _anchors(self) -> list[x509.Certificate]:
        anchors = self._trust_anchors
        if anchors is None:
            return system_trust_anchors()
        return list(anchors() if callable(anchors) else anchors)

    def _signing_key(self, cert_url: str, options: Mapping[str, Any], now: float, source: str = "") -> rsa.RSAPublicKey:
        refused = allowed_cert_url(cert_url, bool(options.get("allow_sandbox", False)))
        if refused:
            raise VerificationError("untrusted_certificate", refused)
        try:
            certificates = self._certificates.get(cert_url, source)
        except Exception as exc:  # a fetcher may raise anything; the request is simply unproven
            reason = str(exc) if isinstance(exc, CertificateFetchError) else exc.__class__.__name__
            raise VerificationError(
                "untrusted_certificate", f"PayPal's certificate could not be fetched from {CERT_URL} ({reason})"
            ) from None
        leaf, intermediates = certificates[0], certificates[1:]
        common_name = _common_name(leaf)
        if not common_name.lower().endswith(CN_SUFFIX):
            raise VerificationError(
                "untrusted_certificate", f"the signing certificate's CN '{common_name[:80]}' is not a PayPal name"
            )
        anchors = self._anchors()
        if not anchors:
            raise VerificationError("untrusted_certificate", "no trusted root certificates are configured")
        try:
            when = dt.datetime.fromtimestamp(now, tz=dt.UTC)
            verifier = (
                PolicyBuilder()
                .store(Store(anchors))
                .time(when)
                .extension_policies(ca_policy=CA_POLICY, ee_policy=EE_POLICY)
                .build_client_verifier()
            )
            verifier.verify(leaf, intermediates)
        except Exception as exc:  # VerificationError of cryptography, or odd times/certificates
            text = str(exc)
            reason = (
                "it is expired or not yet valid" if "validation time" in text else "it does not chain to a trusted root"
            )
            raise VerificationError(
                "untrusted_certificate", f"PayPal's signing certificate is not trusted: {reason}"
            ) from None
        key = leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise VerificationError("untrusted_certificate", "PayPal's signing certificate does not hold an RSA key")
        return key

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Headers and timestamp first (no network for malformed requests), then certificate, then signature."""
        transmission_id = require_header(request, TRANSMISSION_ID)
        transmission_time = require_header(request, TRANSMISSION_TIME)
        signature_text = require_header(request, TRANSMISSION_SIG)
        cert_url = require_header(request, CERT_URL)
        algorithm_name = (request.header(AUTH_ALGO) or "").strip() or DEFAULT_ALGORITHM
        algorithm = _ALGORITHMS.get(algorithm_name.lower())
        if algorithm is None:
            raise VerificationError(
                "bad_format", f"{AUTH_ALGO} must be SHA256withRSA or SHA1withRSA, not '{algorithm_name[:40]}'"
            )
        try:
            signature = base64.b64decode(signature_text, validate=True)
        except (binascii.Error, ValueError):
            raise VerificationError("bad_format", f"{TRANSMISSION_SIG} is not base64") from None
        if not signature:
            raise VerificationError("bad_format", f"{TRANSMISSION_SIG} is empty")

        tolerance = tolerance_seconds(options, 0)
        if tolerance:
            sent = _parse_time(transmission_time)
            if sent is None:
                raise VerificationError("bad_format", f"{TRANSMISSION_TIME} is not an RFC 3339 time")
            check_timestamp_age(sent, now, tolerance, what="transmission time")

        # The simulator's id counts only through accept_simulator, also when stored as a secret (before
        # clean_secret refused it): anyone can have the simulator send PayPal-signed events for it.
        webhook_ids = [
            s.strip() for s in secrets if isinstance(s, str) and s.strip() and s.strip() != SIMULATOR_WEBHOOK_ID
        ]
        if options.get("accept_simulator", False):
            webhook_ids.append(SIMULATOR_WEBHOOK_ID)
        if not webhook_ids:
            raise VerificationError("no_matching_secret", "the source has no PayPal webhook id to verify against")

        # The source's own webhook ids name it here (the simulator's fixed id is everyone's).
        source = "|".join(sorted({s.strip() for s in secrets if isinstance(s, str) and s.strip()}))
        key = self._signing_key(cert_url, options, now, source)
        for webhook_id in webhook_ids:
            message = signed_message(transmission_id, transmission_time, webhook_id, request.body)
            try:
                key.verify(signature, message, padding.PKCS1v15(), algorithm())
                return
            except (InvalidSignature, ValueError):
                continue
        tried = "the webhook id" if len(webhook_ids) == 1 else f"any of the {len(webhook_ids)} webhook ids"
        raise VerificationError(
            "no_matching_secret",
            f"the signature does not match for {tried} tried; check the "
            "source's webhook id (PayPal signs for the id of the webhook that sent the event) and that the raw "
            "body is unchanged",
        )

    def options_signed_by_a_secret(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        # The simulator signs for PayPal's fixed id: its requests tell nothing of which webhook id PayPal uses.
        return {**options, "accept_simulator": False}

    def replay_nonce(self, request: InboundRequest, options: Mapping[str, Any]) -> str | None:
        """The signed PAYPAL-TRANSMISSION-ID: the signature covers only a CRC-32 of the body, which can be
        forged, so a transmission id seen with one body must not be accepted with another."""
        return (request.header(TRANSMISSION_ID) or "").strip() or None

    def nonce_signed_at(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        return _parse_time(request.header(TRANSMISSION_TIME) or "")

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        payload = request.json()
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not a PayPal webhook event object")
        event_id, event_type = payload.get("id"), payload.get("event_type")
        if not isinstance(event_id, str) or not event_id:
            raise MalformedPayload("the PayPal event has no string 'id'")
        if not isinstance(event_type, str) or not event_type:
            raise MalformedPayload("the PayPal event has no string 'event_type'")
        return EventInfo(event_id=event_id, event_type=event_type)


def _parse_time(text: str) -> float | None:
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
