"""Square: ``x-square-hmacsha256-signature`` = base64 HMAC-SHA256(signature key, notification URL + raw body).

The legacy ``x-square-signature`` (HMAC-SHA1 over the same input) is checked only when the
SHA-256 header is absent, so a request cannot be downgraded to SHA-1 while it carries both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .base import (
    EventInfo,
    InboundRequest,
    InvalidOptions,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    constant_time_equal,
    counted,
)

SHA256_HEADER = "x-square-hmacsha256-signature"
SHA1_HEADER = "x-square-signature"


def _digest(key: str, url: str, body: bytes, algorithm: Any) -> bytes:
    # surrogatepass: a garbage URL must fail to match, not raise.
    return hmac.new(key.encode("utf-8"), url.encode("utf-8", "surrogatepass") + body, algorithm).digest()


def notification_url(request_url: str, options: Mapping[str, Any]) -> str:
    """The URL Square signs: the configured ``notification_url``, else the URL the request arrived at."""
    configured = options.get("notification_url")
    return configured if isinstance(configured, str) and configured else request_url


class SquareProvider(Provider):
    """Square webhook subscriptions (Developer Console)."""

    kind = "square"
    label = "Square"
    secret_help = (
        "Square Developer Console → your application → Webhooks → Subscriptions → your subscription → "
        "Signature key (each subscription has its own)."
    )
    secret_generated_by_us = False
    options = (
        ProviderOption(
            name="notification_url",
            label="Notification URL",
            help_text=(
                "The notification URL exactly as entered on the Square subscription (Square signs it together with "
                "the body). Leave empty when it is this source's ingest URL as Hookline shows it; set it when Square "
                "calls another address that forwards here (a proxy or tunnel) or when the two differ in any way "
                "(trailing slash, query string, http/https)."
            ),
            default="",
        ),
    )
    docs_verifies = (
        "x-square-hmacsha256-signature: base64 HMAC-SHA256 keyed with the subscription's signature key (as text, not "
        "decoded) over the notification URL followed by the raw body; the URL is the `notification_url` option, or, "
        "when empty, the URL the request arrived at (PUBLIC_BASE_URL + path + query). Legacy x-square-signature "
        "(base64 HMAC-SHA1, same input) is accepted only when the SHA-256 header is absent. An empty body is refused. "
        "No timestamp, so no replay window."
    )
    sample_event_id_path = ("event_id",)
    event_id_from = "event_id in the body"
    docs_event_id = "payload `event_id` (the same on Square's retries)"
    docs_event_type = "payload `type`, e.g. payment.updated"

    def clean_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        cleaned = super().clean_options(raw)
        url = (cleaned["notification_url"] or "").strip()
        if url:
            try:
                parts = urlsplit(url)
            except ValueError:
                raise InvalidOptions("option 'notification_url' is not a URL") from None
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise InvalidOptions("option 'notification_url' must be a full http(s) URL, as entered on Square")
        cleaned["notification_url"] = url
        return cleaned

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """The SHA-256 header when present, else the legacy SHA-1 one; any secret may match."""
        header, algorithm, size = SHA256_HEADER, hashlib.sha256, 32
        value = (request.header(SHA256_HEADER) or "").strip()
        if not value:
            header, algorithm, size = SHA1_HEADER, hashlib.sha1, 20
            value = (request.header(SHA1_HEADER) or "").strip()
        if not value:
            raise VerificationError(
                "missing_signature", f"the {SHA256_HEADER} header (or the legacy {SHA1_HEADER}) is missing"
            )
        try:
            candidate = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise VerificationError("bad_format", f"the {header} header is not base64") from None
        if len(candidate) != size:
            raise VerificationError("bad_format", f"the {header} header does not hold a {size}-byte signature")
        if not request.body:
            raise VerificationError("bad_format", "the body is empty; Square signs every notification's body")
        url = notification_url(request.url, options)
        expected = [_digest(secret, url, request.body, algorithm) for secret in secrets if secret]
        if not any(constant_time_equal(e, candidate) for e in expected):
            if options.get("notification_url"):
                where = "the notification_url option"
            else:
                where = f"the URL this request arrived at ({url[:300]!r}; set notification_url if Square's differs)"
            raise VerificationError(
                "no_matching_secret",
                f"the {header} signature does not match ({counted(len(expected), 'secret')} tried) using {where}; check the "
                "subscription's signature key, the notification URL, and that the raw body is unchanged",
            )

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        payload = request.json()
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not a Square event object")
        event_id, event_type = payload.get("event_id"), payload.get("type")
        if not isinstance(event_id, str) or not event_id:
            raise MalformedPayload("the Square event has no string 'event_id'")
        if not isinstance(event_type, str) or not event_type:
            raise MalformedPayload("the Square event has no string 'type'")
        return EventInfo(event_id=event_id, event_type=event_type)

    def sign(
        self,
        body: bytes,
        secret: str,
        options: Mapping[str, Any],
        now: float,
        *,
        url: str = "",
        event_id: str | None = None,
        event_type: str | None = None,
    ) -> dict[str, str]:
        """The SHA-256 header over the notification URL (the option, else ``url``) and the body."""
        signature = _digest(secret, notification_url(url, options), body, hashlib.sha256)
        return {SHA256_HEADER: base64.b64encode(signature).decode()}
