"""Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]``, HMAC-SHA256 over ``"<t>.<body>"``."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

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
    require_header,
    signatures_do_not_match,
    tolerance_seconds,
)

HEADER = "Stripe-Signature"
DEFAULT_TOLERANCE = 300
_TIMESTAMP = re.compile(r"\d{1,15}")
_HEX = re.compile(r"[0-9a-fA-F]+")


def _signature(secret: str, timestamp: int, body: bytes) -> str:
    # The whole secret, whsec_ prefix included, is the key: Stripe does not base64-decode it.
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _parse_header(value: str) -> tuple[int, list[str]]:
    """The timestamp and every v1 signature of a Stripe-Signature header."""
    timestamp_text: str | None = None
    signatures: list[str] = []
    for item in value.split(","):
        key, sep, item_value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t" and timestamp_text is None:
            timestamp_text = item_value.strip()
        elif key == "v1":
            signatures.append(item_value.strip())
    if timestamp_text is None:
        raise VerificationError("bad_format", f"the {HEADER} header has no t= timestamp")
    if not _TIMESTAMP.fullmatch(timestamp_text):
        raise VerificationError("bad_format", f"the t= timestamp in the {HEADER} header is not a Unix time in seconds")
    if not signatures:
        raise VerificationError(
            "bad_format", f"the {HEADER} header has no v1= signature (v0= test signatures cannot be verified)"
        )
    return int(timestamp_text), signatures


class StripeProvider(Provider):
    """Stripe webhook endpoints (snapshot and thin events share the scheme)."""

    kind = "stripe"
    label = "Stripe"
    secret_help = (
        "Stripe Dashboard → Developers → Webhooks → your endpoint → Signing secret "
        "(starts with whsec_). For the Stripe CLI, the secret printed by `stripe listen`."
    )
    secret_generated_by_us = False
    options = (
        ProviderOption(
            name="tolerance",
            label="Timestamp tolerance (seconds)",
            help_text="Reject signatures older than this; 0 turns the check off. Stripe's SDKs use 300.",
            default=DEFAULT_TOLERANCE,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "t= in the Stripe-Signature header"
    docs_verifies = (
        'Stripe-Signature header: hex HMAC-SHA256 of "<t>.<raw body>" keyed with the whole whsec_ secret; '
        "any v1 signature may match; t may be at most `tolerance` seconds old."
    )
    event_id_from = "id in the body"
    docs_event_id = "payload `id` (evt_…), identical on every retry"
    docs_event_type = "payload `type`, e.g. invoice.paid"

    def clean_secret(self, secret: str) -> str:
        secret = super().clean_secret(secret)
        if not secret.startswith("whsec_"):
            raise InvalidOptions("a Stripe signing secret starts with whsec_ (it is not the API key)")
        return secret

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if any configured secret matches any v1 signature, then check the timestamp age."""
        timestamp, signatures = _parse_header(require_header(request, HEADER))
        # Comparing bytes keeps non-ASCII garbage in the header from raising TypeError.
        candidates = [s.lower().encode() for s in signatures if _HEX.fullmatch(s)]
        expected = [_signature(secret, timestamp, request.body).encode() for secret in secrets if secret]
        if not any(constant_time_equal(e, c) for e in expected for c in candidates):
            raise VerificationError(
                "no_matching_secret",
                f"{signatures_do_not_match(len(signatures), 'v1')} the endpoint's signing secret "
                f"({counted(len(expected), 'secret')} tried); check the whsec_ secret and that the raw body is unchanged",
            )
        tolerance = tolerance_seconds(options, DEFAULT_TOLERANCE)
        if tolerance and timestamp < now - tolerance:
            raise VerificationError(
                "timestamp_out_of_tolerance",
                f"timestamp is {int(now - timestamp)} s old; tolerance is {tolerance} s",
            )

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        try:
            return float(_parse_header(require_header(request, HEADER))[0])
        except VerificationError:
            return None

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Id and type come from the event object in the body."""
        payload = request.json()
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not a Stripe event object")
        event_id, event_type = payload.get("id"), payload.get("type")
        if not isinstance(event_id, str) or not event_id:
            raise MalformedPayload("the Stripe event has no string 'id'")
        if not isinstance(event_type, str) or not event_type:
            raise MalformedPayload("the Stripe event has no string 'type'")
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
        """The Stripe-Signature header; id and type live in the body, so they are ignored."""
        timestamp = int(now)
        return {HEADER: f"t={timestamp},v1={_signature(secret, timestamp, body)}"}
