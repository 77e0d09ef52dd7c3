"""Mailgun: the signature travels inside the JSON body, not in a header.

``{"signature": {"timestamp": "…", "token": "…", "signature": "<hex>"}, "event-data": {…}}`` where the
signature is hex HMAC-SHA256(key = the Webhook Signing Key, message = timestamp + token, no separator).
Subaccount events add a ``parent-signature`` object, signed with the parent account's key.

Because the signature is part of the body, ``sign()`` has no header to return: ``prepare_body()`` writes a
fresh signature object into the body instead (for the test sender).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .base import (
    EventInfo,
    InboundRequest,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    check_timestamp_age,
    constant_time_equal,
    json_field,
    tolerance_seconds,
)

SIGNATURE_FIELDS = ("signature", "parent-signature")
_HEX = re.compile(r"[0-9a-fA-F]{64}")
_TIMESTAMP = re.compile(r"\d{1,15}")


def _signature(key: str, timestamp: str, token: str) -> str:
    message = f"{timestamp}{token}".encode("utf-8", "surrogatepass")
    return hmac.new(key.encode("utf-8", "surrogatepass"), message, hashlib.sha256).hexdigest()


def _parts(block: Any) -> tuple[str, str, str] | None:
    """(timestamp, token, signature) of a well-formed signature object, else None."""
    if not isinstance(block, dict):
        return None
    timestamp, token, signature = block.get("timestamp"), block.get("token"), block.get("signature")
    if isinstance(timestamp, int) and not isinstance(timestamp, bool) and timestamp >= 0:
        timestamp = str(timestamp)
    if not isinstance(timestamp, str) or not _TIMESTAMP.fullmatch(timestamp):
        return None
    if not isinstance(token, str) or not token or len(token) > 1000:
        return None
    if not isinstance(signature, str) or not _HEX.fullmatch(signature):
        return None
    return timestamp, token, signature.lower()


class MailgunProvider(Provider):
    """Mailgun webhooks (delivered, opened, clicked, failed, complained, unsubscribed, accepted…)."""

    kind = "mailgun"
    label = "Mailgun"
    secret_help = (
        "Mailgun Control Panel → Sending → Webhooks → HTTP webhook signing key (also under your account's "
        "Security / API keys). It is not your private API key."
    )
    secret_generated_by_us = False
    options = (
        ProviderOption(
            name="tolerance",
            label="Freshness window (seconds)",
            help_text=(
                "If set, reject signatures whose timestamp is further than this from now. 0 (the default) turns "
                "the check off: Mailgun warns against strict windows, and the event id already catches replays."
            ),
            default=0,
            kind="int",
            min_value=0,
        ),
    )
    docs_verifies = (
        "The JSON body's signature object: signature = hex HMAC-SHA256 of timestamp + token (no separator) keyed "
        "with the Webhook Signing Key; a subaccount's parent-signature object is accepted too (same shape "
        "assumed). Optional freshness window (option `tolerance`, off by default). The rest of the body is not "
        "covered by the signature. The test sender signs by rewriting the body's signature object."
    )
    sample_event_id_path = ("event-data", "id")
    docs_event_id = "payload `event-data.id` (the event's id, the same on every retry)"
    docs_event_type = "payload `event-data.event`, e.g. delivered, failed, opened"

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if any signing key's HMAC of timestamp + token equals a signature object in the body."""
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("signature"), dict):
            raise VerificationError(
                "missing_signature",
                "the JSON body has no 'signature' object (Mailgun's JSON webhooks carry timestamp, token and "
                "signature there)",
            )
        blocks = [_parts(payload.get(name)) for name in SIGNATURE_FIELDS]
        if blocks[0] is None:
            raise VerificationError(
                "bad_format",
                "the body's signature object needs a numeric timestamp, a token and a 64-character hex signature",
            )
        keys = [s for s in secrets if s]
        matched = None
        for block in (b for b in blocks if b is not None):
            timestamp, token, signature = block
            expected = [_signature(key, timestamp, token).encode() for key in keys]
            if any(constant_time_equal(e, signature.encode()) for e in expected):
                matched = int(timestamp)
                break
        if matched is None:
            raise VerificationError(
                "no_matching_secret",
                f"the body's signature does not match the webhook signing key ({len(keys)} key(s) tried); "
                "check that the key is the HTTP webhook signing key, not the API key",
            )
        check_timestamp_age(matched, now, tolerance_seconds(options, 0))

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Id and type come from the event-data object."""
        payload = request.json()
        event_id, event_type = json_field(payload, "event-data", "id"), json_field(payload, "event-data", "event")
        if not isinstance(event_type, str) or not event_type.strip():
            raise MalformedPayload("the body has no string 'event-data.event'")
        if not isinstance(event_id, str) or not event_id.strip():
            raise MalformedPayload("the body has no string 'event-data.id'")
        return EventInfo(event_id=event_id.strip(), event_type=event_type.strip())

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
        """No headers: Mailgun's signature is in the body. Call prepare_body() on the body first."""
        return {}

    def prepare_body(self, body: bytes, secret: str, options: Mapping[str, Any], now: float) -> bytes:
        """``body`` with a fresh signature object (timestamp ``now``, random 50-character token).

        MalformedPayload if the body is not a JSON object. Other keys keep their order.
        """
        payload = InboundRequest(body=body, headers={}).json()
        if not isinstance(payload, dict):
            raise MalformedPayload("a Mailgun body is a JSON object")
        timestamp = str(int(now))
        token = (uuid.uuid4().hex + uuid.uuid4().hex)[:50]
        signature = {"timestamp": timestamp, "token": token, "signature": _signature(secret, timestamp, token)}
        payload = {"signature": signature, **{k: v for k, v in payload.items() if k != "signature"}}
        return json.dumps(payload, indent=2).encode()
