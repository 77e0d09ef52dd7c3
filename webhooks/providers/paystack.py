"""Paystack: ``x-paystack-signature`` = lowercase hex HMAC-SHA512(secret API key, raw body).

Paystack has no separate webhook secret: the key is the account's secret API key (``sk_live_…`` /
``sk_test_…``). There is no timestamp and no event id. providers.md §8 marks all of this [3P]
(no official source was available, every implementation examined agrees).
"""

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
    VerificationError,
    constant_time_equal,
    counted,
    require_header,
)

HEADER = "x-paystack-signature"
_HEX512 = re.compile(r"[0-9a-fA-F]{128}")


def _signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8", "surrogatepass"), body, hashlib.sha512).hexdigest()


def _text(value: Any) -> str | None:
    """A usable id value: non-empty strings and integers (not booleans)."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class PaystackProvider(Provider):
    """Paystack (Nigeria, Ghana, Kenya, South Africa…) transaction, transfer and subscription events."""

    kind = "paystack"
    label = "Paystack"
    secret_help = (
        "Paystack Dashboard → Settings → API Keys & Webhooks → Secret Key (sk_live_… or sk_test_…, the same mode "
        "as the webhook URL you set there). Paystack signs webhooks with the secret API key itself."
    )
    secret_generated_by_us = False
    setup_steps = (
        "Paystack Dashboard → Settings → API Keys & Webhooks: enter the ingest URL as the Webhook URL of the mode "
        "you use (Test or Live) and save.",
        "Copy the Secret Key of that same mode (sk_test_… or sk_live_…) into this source: Paystack signs webhooks "
        "with it. Test and live each need their own source, as each mode has its own key and URL.",
    )
    docs_verifies = (
        "x-paystack-signature: lowercase hex HMAC-SHA512 of the raw body keyed with the secret API key (sk_…). "
        "No timestamp, so replays are caught only by the event id. Based on third-party implementations, which all "
        "agree (no official Paystack source was available)."
    )
    event_id_from = "made from the body: Paystack sends none"
    docs_event_id = (
        "derived (Paystack sends no event id): '<event>:<data.id, else data.reference>:<first 16 hex digits of "
        "sha256(body)>', e.g. charge.success:302961:1a2b…; the event name keeps ids of different object kinds "
        "apart and the body digest keeps repeated notifications about one object (invoice.update, "
        "charge.dispute.remind) apart while identical retries stay duplicates; sha256:<hex of body> when data "
        "has neither field. Searching events for '<event>:<id>' (charge.success:302961) finds them"
    )
    docs_event_type = "payload `event`, e.g. charge.success"

    def clean_secret(self, secret: str) -> str:
        secret = super().clean_secret(secret)
        if secret.startswith("pk_"):
            raise InvalidOptions("that is the public key; Paystack signs webhooks with the secret key (sk_…)")
        if not secret.startswith("sk_"):
            raise InvalidOptions("a Paystack secret key starts with sk_live_ or sk_test_")
        return secret

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if any secret key's HMAC-SHA512 of the raw body equals the header."""
        value = require_header(request, HEADER)
        if not _HEX512.fullmatch(value):
            raise VerificationError("bad_format", f"the {HEADER} header must be a 128-character hex SHA-512 HMAC")
        candidate = value.lower().encode()
        if not any(constant_time_equal(_signature(s, request.body).encode(), candidate) for s in secrets if s):
            raise VerificationError(
                "no_matching_secret",
                f"the {HEADER} signature does not match the secret key ({counted(len(secrets), 'key')} tried); "
                "check that the key is the secret key of the same mode (test/live) and that the raw body is unchanged",
            )

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Type from `event`; id derived from the event, the data object's id/reference and the body digest."""
        payload = request.json()
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not a Paystack event object")
        event = payload.get("event")
        if not isinstance(event, str) or not event.strip():
            raise MalformedPayload("the Paystack event has no string 'event'")
        event = event.strip()
        digest = hashlib.sha256(request.body).hexdigest()
        data = payload.get("data")
        reference = None
        if isinstance(data, dict):
            reference = _text(data.get("id")) or _text(data.get("reference"))
        if reference is None:
            return EventInfo(event_id=f"sha256:{digest}", event_type=event)
        return EventInfo(event_id=f"{event}:{reference[:160]}:{digest[:16]}", event_type=event)

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
        """The signature header; id and type live in (or derive from) the body, so they are ignored."""
        return {HEADER: _signature(secret, body)}
