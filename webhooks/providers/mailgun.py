"""Mailgun: the signature travels inside the JSON body, not in a header.

``{"signature": {"timestamp": "…", "token": "…", "signature": "<hex>"}, "event-data": {…}}`` where the
signature is hex HMAC-SHA256(key = the Webhook Signing Key, message = timestamp + token, no separator).
Subaccount events add ``parent-signature``, the same HMAC keyed with the parent account's key: Mailgun
documents it as a field of the signature object; a separate top-level object is accepted too, but only
with the signature object's token and timestamp, so the verified ones are always those of ``signature``.

The signature does not cover the body, so that token is the replay nonce (``replay_nonce()``): the
ingest service refuses a token seen before with a different body.

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
    counted,
    json_field,
    tolerance_seconds,
)

PARENT_FIELD = "parent-signature"
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
                "the check off: Mailgun warns against strict windows, and the single-use token already catches replays."
            ),
            default=0,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "signature.timestamp in the body"
    docs_verifies = (
        "The JSON body's signature object: signature = hex HMAC-SHA256 of timestamp + token (no separator) keyed "
        "with the Webhook Signing Key; a subaccount event's parent-signature (keyed with the parent account's "
        "key; in the signature object, or a top-level object with the same token and timestamp) is accepted too. Optional "
        "freshness window (option `tolerance`, off by default). The rest of the body is not covered by the "
        "signature, so a signature reused with a different body is refused (its token is single-use across the "
        "organization's Mailgun sources, which often share the account's key). The test sender signs by rewriting the body's signature object."
    )
    sample_event_id_path = ("event-data", "id")
    event_id_from = "event-data.id in the body"
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
        main = _parts(payload["signature"])
        if main is None:
            raise VerificationError(
                "bad_format",
                "the body's signature object needs a numeric timestamp, a token and a 64-character hex signature",
            )
        blocks = [main]
        inner_parent = payload["signature"].get(PARENT_FIELD)
        if isinstance(inner_parent, str) and _HEX.fullmatch(inner_parent):
            blocks.append((main[0], main[1], inner_parent.lower()))
        outer_parent = _parts(payload.get(PARENT_FIELD))
        # Only with the same token and timestamp: replay_nonce() and nonce_signed_at() report those of the
        # signature object, which must be what was verified (an old captured signature moved here next to a
        # fresh timestamp would otherwise outlive its nonce and sign any body).
        if outer_parent is not None and outer_parent[:2] == main[:2]:
            blocks.append(outer_parent)
        keys = [s for s in secrets if s]
        matched = None
        for timestamp, token, signature in blocks:
            expected = [_signature(key, timestamp, token).encode() for key in keys]
            if any(constant_time_equal(e, signature.encode()) for e in expected):
                matched = int(timestamp)
                break
        if matched is None:
            raise VerificationError(
                "no_matching_secret",
                f"the body's signature does not match the webhook signing key ({counted(len(keys), 'key')} tried); "
                "check that the key is the HTTP webhook signing key, not the API key",
            )
        check_timestamp_age(matched, now, tolerance_seconds(options, 0))

    def replay_nonce(self, request: InboundRequest, options: Mapping[str, Any]) -> str | None:
        """The signed token of the signature object (verify() accepts no other token), or None when the body
        has no well-formed signature object."""
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        main = _parts(payload.get("signature")) if isinstance(payload, dict) else None
        return main[1] if main is not None else None

    def nonce_signed_at(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        main = _parts(payload.get("signature")) if isinstance(payload, dict) else None
        return float(main[0]) if main is not None else None

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
