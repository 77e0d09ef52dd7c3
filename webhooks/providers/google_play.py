"""Google Play Real-time developer notifications, delivered by a Cloud Pub/Sub push subscription.

Pub/Sub authenticates push requests with ``Authorization: Bearer <OIDC token>`` (RS256, signed by
Google) when the subscription has authentication enabled (providers.md §11). We check, like
``google.oauth2.id_token.verify_oauth2_token`` plus the e-mail checks Google's docs ask for:

* the RS256 signature against Google's certificates (``https://www.googleapis.com/oauth2/v1/certs``,
  fetched over https only, cached for an hour, refetched at most once a minute for an unknown ``kid``);
* ``iss`` is ``accounts.google.com`` or ``https://accounts.google.com``;
* ``aud`` equals the audience configured on the push subscription (option ``audience``);
* ``exp`` and ``iat``, with ``leeway`` seconds of clock skew;
* ``email`` is the push service account (option ``service_account_email``) and ``email_verified`` is true.

The token authenticates the sender, not the body: Pub/Sub does not sign the message itself.
The header is a bearer credential, so it is never stored. The source's secret is not used.
The fetcher is injectable (``GooglePlayProvider(fetcher=…)``) so tests never touch the network.
"""

from __future__ import annotations

import base64
import binascii
import json
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

from .base import (
    EventInfo,
    InboundRequest,
    InvalidOptions,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    require_header,
)

AUTHORIZATION = "Authorization"
CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
ALLOWED_HOSTS = frozenset({"www.googleapis.com"})
ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
DEFAULT_LEEWAY = 60
MAX_LEEWAY = 600

FETCH_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 256 * 1024
CACHE_TTL = 3600.0  # Google serves these with max-age of a few hours; keys rotate over weeks
STALE_GRACE = 24 * 3600.0  # keep using known keys this long when Google cannot be reached
MIN_FETCH_INTERVAL = 60.0  # an unknown kid (or a failed fetch) triggers at most one fetch a minute

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
KNOWN_NOTIFICATIONS = (
    "subscriptionNotification",
    "oneTimeProductNotification",
    "voidedPurchaseNotification",
    "testNotification",
)

Fetcher = Callable[[str], bytes]
_clock = time.monotonic  # patched in tests


class CertificateFetchError(Exception):
    """Google's certificates could not be fetched or read."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def default_fetcher(url: str) -> bytes:
    """GET ``url`` over https from www.googleapis.com only, with a short timeout and a size cap."""
    try:
        parts = urlsplit(url)
        allowed = parts.scheme == "https" and (parts.hostname or "") in ALLOWED_HOSTS and parts.port in (None, 443)
    except ValueError:
        allowed = False
    if not allowed or parts.username is not None:
        raise CertificateFetchError("refused URL")
    opener = urllib.request.build_opener(
        _NoRedirects(), urllib.request.HTTPSHandler(context=ssl.create_default_context())
    )
    request = urllib.request.Request(  # noqa: S310 - https on an allowlisted host, checked above
        url, headers={"User-Agent": "Hookline-webhook-verifier", "Accept": "application/json"}
    )
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT) as response:
            if response.status != 200:
                raise CertificateFetchError(f"HTTP {response.status}")
            data = response.read(MAX_DOCUMENT_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CertificateFetchError(exc.__class__.__name__) from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise CertificateFetchError("response too large")
    return data


def parse_key_document(data: bytes) -> dict[str, rsa.RSAPublicKey]:
    """kid → RSA key from Google's v1 document (``{kid: PEM certificate}``) or a JWKS (``{"keys": [...]}``)."""
    document = json.loads(data)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    keys: dict[str, rsa.RSAPublicKey] = {}
    if isinstance(document.get("keys"), list):
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not isinstance(jwk.get("kid"), str):
                continue
            try:
                n = int.from_bytes(_b64url(jwk["n"]), "big")
                e = int.from_bytes(_b64url(jwk["e"]), "big")
                keys[jwk["kid"]] = rsa.RSAPublicNumbers(e, n).public_key()
            except Exception:  # noqa: S112 - an unusable entry is skipped, the others still count
                continue
    else:
        for kid, pem in document.items():
            if not isinstance(pem, str):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    key = x509.load_pem_x509_certificate(pem.encode("ascii")).public_key()
            except Exception:  # noqa: S112 - an unusable entry is skipped, the others still count
                continue
            if isinstance(key, rsa.RSAPublicKey):
                keys[kid] = key
    if not keys:
        raise ValueError("no usable RSA key")
    return keys


class _KeyCache:
    def __init__(self, fetcher: Fetcher, url: str):
        self._fetcher = fetcher
        self._url = url
        self._lock = threading.Lock()
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fetched_at = float("-inf")
        self._last_attempt = float("-inf")

    def keys(self, *, refresh: bool = False) -> dict[str, rsa.RSAPublicKey]:
        """Cached keys; fetched when older than the TTL, or on ``refresh`` (rate-limited)."""
        with self._lock:
            clock = _clock()
            fresh = clock - self._fetched_at < CACHE_TTL
            if (fresh and not refresh) or clock - self._last_attempt < MIN_FETCH_INTERVAL:
                if self._keys and clock - self._fetched_at < CACHE_TTL + STALE_GRACE:
                    return self._keys
                if clock - self._last_attempt < MIN_FETCH_INTERVAL:
                    raise CertificateFetchError("a recent fetch of Google's certificates failed; retrying shortly")
            self._last_attempt = clock
            try:
                data = self._fetcher(self._url)
                if not isinstance(data, bytes):
                    raise CertificateFetchError("fetcher returned no bytes")
                keys = parse_key_document(data)
            except Exception as exc:
                if self._keys and clock - self._fetched_at < CACHE_TTL + STALE_GRACE:
                    return self._keys  # Google unreachable: keep the keys we know for a while
                reason = str(exc) if isinstance(exc, CertificateFetchError) else exc.__class__.__name__
                raise CertificateFetchError(reason) from None
            self._keys, self._fetched_at = keys, clock
            return keys


def _b64url(text: str) -> bytes:
    """Strict unpadded base64url (no other spelling of the same bytes is accepted)."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != text:
        raise ValueError("not canonical base64url")
    return data


def _json_object(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _short(value: Any) -> str:
    return repr(value)[:100]


class GooglePlayProvider(Provider):
    """Google Play RTDN through an authenticated Pub/Sub push subscription."""

    kind = "google_play"
    label = "Google Play (Pub/Sub push)"
    cannot_sign_reason = (
        "Google signs Pub/Sub push tokens with its own keys; Hookline cannot sign test requests. "
        "Use Play Console → Monetization setup → 'Send test notification' instead."
    )
    secret_help = (
        "Google Play has no shared secret: Pub/Sub signs an OIDC token for your push subscription. Enter any "
        "placeholder here (it is not used) and set the options: in Google Cloud console → Pub/Sub → your push "
        "subscription → Enable authentication, note the service account and the audience."
    )
    secret_generated_by_us = False
    uses_secret = False
    options = (
        ProviderOption(
            name="audience",
            label="Audience",
            help_text=(
                "The audience set on the push subscription. When it was left empty, Pub/Sub is said to use the push "
                "endpoint URL [UNCONFIRMED]; a rejected request's detail shows the audience the token carries."
            ),
            required=True,
        ),
        ProviderOption(
            name="service_account_email",
            label="Push service account e-mail",
            help_text="The service account the push subscription authenticates as, e.g. rtdn-push@my-project.iam.gserviceaccount.com.",
            required=True,
        ),
        ProviderOption(
            name="leeway",
            label="Clock leeway (seconds)",
            help_text=f"Allowed clock skew for the token's exp and iat (0–{MAX_LEEWAY}).",
            default=DEFAULT_LEEWAY,
            kind="int",
        ),
    )
    docs_replay = (
        "the push token's exp (Google issues it for about an hour, each push a new one) refuses a capture after that"
    )
    docs_verifies = (
        "Authorization: Bearer <OIDC token> of the Pub/Sub push subscription: RS256 signature by one of Google's "
        "certificates (www.googleapis.com/oauth2/v1/certs, cached), iss accounts.google.com or "
        "https://accounts.google.com, aud equal to `audience`, exp/iat within `leeway` seconds, email equal to "
        "`service_account_email` and email_verified true. The token proves the sender, not the body (Pub/Sub does "
        "not sign messages). The header is never stored; the source's secret is not used; the test sender cannot "
        "sign (Google's private key)."
    )
    event_id_from = "Pub/Sub messageId in the body"
    docs_event_id = "message.messageId of the Pub/Sub envelope (the same on every redelivery)"
    docs_event_type = (
        "from the base64 message.data: subscriptionNotification.<notificationType> (e.g. subscriptionNotification.4 "
        "= SUBSCRIPTION_PURCHASED), oneTimeProductNotification.<notificationType>, voidedPurchaseNotification, "
        "testNotification; 'unknown' for other data"
    )

    def __init__(self, fetcher: Fetcher | None = None, certs_url: str = CERTS_URL):
        self._keys = _KeyCache(fetcher or default_fetcher, certs_url)

    def clean_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        cleaned = super().clean_options(raw)
        cleaned["audience"] = cleaned["audience"].strip()
        cleaned["service_account_email"] = cleaned["service_account_email"].strip()
        if not cleaned["audience"]:
            raise InvalidOptions("option 'audience' is required")
        if not _EMAIL.fullmatch(cleaned["service_account_email"]):
            raise InvalidOptions("option 'service_account_email' must be an e-mail address")
        if not 0 <= cleaned["leeway"] <= MAX_LEEWAY:
            raise InvalidOptions(f"option 'leeway' must be between 0 and {MAX_LEEWAY} seconds")
        return cleaned

    def clean_secret(self, secret: str) -> str:
        """Any non-blank placeholder: the token is checked against Google's keys and the options."""
        return super().clean_secret(secret)

    def secret_header_names(self, options: Mapping[str, Any]) -> set[str]:
        return {"authorization"}

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Token shape, then Google's signature, then the claims; ``secrets`` are not used."""
        value = require_header(request, AUTHORIZATION)
        scheme, _, token = value.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise VerificationError("bad_format", "the Authorization header is not 'Bearer <token>'")
        parts = token.split(".")
        if len(parts) != 3:
            raise VerificationError("bad_format", "the bearer token is not a JWT (three dot-separated parts)")
        try:
            header = _json_object(_b64url(parts[0]))
            claims = _json_object(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except (ValueError, UnicodeDecodeError, RecursionError, binascii.Error):
            raise VerificationError("bad_format", "the bearer token's parts are not base64url JSON") from None
        if header.get("alg") != "RS256":
            raise VerificationError("bad_format", f"the token's alg is {_short(header.get('alg'))}, not RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise VerificationError("bad_format", "the token has no kid header")

        try:
            keys = self._keys.keys()
            if kid not in keys:
                keys = self._keys.keys(refresh=True)  # Google may have rotated its keys
        except Exception as exc:
            reason = str(exc) if isinstance(exc, CertificateFetchError) else exc.__class__.__name__
            raise VerificationError(
                "untrusted_certificate", f"Google's certificates could not be fetched ({reason})"
            ) from None
        key = keys.get(kid)
        if key is None:
            raise VerificationError("no_matching_secret", "the token is not signed by one of Google's current keys")
        try:
            key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise VerificationError(
                "no_matching_secret", "the token's signature does not verify with Google's key"
            ) from None

        if claims.get("iss") not in ISSUERS:
            raise VerificationError(
                "no_matching_secret", f"the token's issuer {_short(claims.get('iss'))} is not Google"
            )
        audience = claims.get("aud")
        expected_audience = options.get("audience")
        audiences = audience if isinstance(audience, list) else [audience]
        if not expected_audience or expected_audience not in audiences:
            raise VerificationError(
                "no_matching_secret",
                f"the token's audience {_short(audience)} is not the source's audience {_short(expected_audience)}",
            )
        leeway = _leeway(options)
        expires, issued = _number(claims.get("exp")), _number(claims.get("iat"))
        if expires is None or issued is None:
            raise VerificationError("bad_format", "the token lacks numeric exp and iat claims")
        if now > expires + leeway:
            raise VerificationError(
                "timestamp_out_of_tolerance", f"the token expired {int(now - expires)} s ago; leeway is {leeway} s"
            )
        if issued > now + leeway:
            raise VerificationError(
                "timestamp_out_of_tolerance",
                f"the token is issued {int(issued - now)} s in the future; leeway is {leeway} s (check clocks)",
            )
        email, expected_email = claims.get("email"), options.get("service_account_email")
        if (
            not isinstance(email, str)
            or not isinstance(expected_email, str)
            or email.casefold() != expected_email.casefold()
        ):
            raise VerificationError(
                "no_matching_secret",
                f"the token's email {_short(email)} is not the source's service_account_email {_short(expected_email)}",
            )
        if claims.get("email_verified") not in (True, "true"):
            raise VerificationError(
                "no_matching_secret", "the token's email is not verified (email_verified is not true)"
            )

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        payload = request.json()
        message = payload.get("message") if isinstance(payload, dict) else None
        if not isinstance(message, dict):
            raise MalformedPayload("the body is not a Pub/Sub push envelope with a 'message'")
        message_id = message.get("messageId") or message.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise MalformedPayload("the Pub/Sub message has no string 'messageId'")
        data = message.get("data")
        try:
            notification = _json_object(base64.b64decode(data, validate=True)) if isinstance(data, str) else None
        except (ValueError, UnicodeDecodeError, RecursionError, binascii.Error):
            notification = None
        if notification is None:
            raise MalformedPayload("message.data is not base64 of a JSON object")
        return EventInfo(event_id=message_id, event_type=notification_type(notification))


def notification_type(notification: Mapping[str, Any]) -> str:
    """The event type of a decoded RTDN (see docs_event_type)."""
    keys = [k for k in KNOWN_NOTIFICATIONS if k in notification]
    keys += sorted(k for k in notification if isinstance(k, str) and k.endswith("Notification") and k not in keys)
    for key in keys:
        body = notification.get(key)
        if not isinstance(body, dict):
            continue
        kind = body.get("notificationType")
        if isinstance(kind, (int, str)) and not isinstance(kind, bool) and str(kind):
            return f"{key}.{kind}"
        return key
    return "unknown"


def _leeway(options: Mapping[str, Any]) -> int:
    value = options.get("leeway", DEFAULT_LEEWAY)
    try:
        return min(max(int(value if value is not None else DEFAULT_LEEWAY), 0), MAX_LEEWAY)
    except (TypeError, ValueError):
        return DEFAULT_LEEWAY
