"""Discord: Ed25519 over ``X-Signature-Timestamp + raw body``, checked with the application's public key.

The same headers sign both kinds of request Discord sends to an app:

* interactions (Interactions Endpoint URL): ``{"id", "type": 1..5, "token", …}``; a PING (type 1) is
  answered with ``{"type": 1}`` (PONG) once verified;
* webhook events (Webhook Events URL): ``{"version": 1, "application_id", "type": 0|1, "event": {…}}``;
  a PING (type 0) is answered with 204 and no body.

The stored "secret" is the application's hex public key, so Hookline can verify but never sign.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .base import (
    EventInfo,
    HandshakeResponse,
    InboundRequest,
    InvalidOptions,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    check_timestamp_age,
    counted,
    header_unix_time,
    headers_missing,
    tolerance_seconds,
)

SIGNATURE_HEADER = "X-Signature-Ed25519"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
INTERACTION_TYPES = {
    1: "PING",
    2: "APPLICATION_COMMAND",
    3: "MESSAGE_COMPONENT",
    4: "APPLICATION_COMMAND_AUTOCOMPLETE",
    5: "MODAL_SUBMIT",
}
PONG = HandshakeResponse(status=200, body=b'{"type":1}', content_type="application/json")
WEBHOOK_EVENT_PING_REPLY = HandshakeResponse(status=204, body=b"", content_type="text/plain")
_PUBLIC_KEY = re.compile(r"[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")
_TIMESTAMP = re.compile(r"\d{1,15}")
# The points of small order are the ones whose y coordinate (mod p) is 0, 1, -1 or ±y8 (libsodium's
# blocklist), whatever the sign bit. As a public key, such a point verifies signatures nobody made
# (R a small-order point and S = 0 pass for most messages), and OpenSSL does not refuse it.
_P = 2**255 - 19
_Y8 = int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little")
_SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _Y8, _P - _Y8})


def _has_small_order(encoded: bytes) -> bool:
    return (int.from_bytes(encoded, "little") & ((1 << 255) - 1)) % _P in _SMALL_ORDER_Y


def _public_key(secret: str) -> Ed25519PublicKey | None:
    text = (secret or "").strip()
    if not _PUBLIC_KEY.fullmatch(text):
        return None
    encoded = bytes.fromhex(text)
    if _has_small_order(encoded):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(encoded)
    except ValueError:
        return None


def _payload(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _is_webhook_event(payload: Any) -> bool:
    """Webhook events carry an `event` object (type 1) or are a type-0 PING; interactions are neither."""
    if not isinstance(payload, dict):
        return False
    kind = payload.get("type")
    return isinstance(payload.get("event"), dict) or (kind == 0 and not isinstance(kind, bool))


class DiscordProvider(Provider):
    """Discord application interactions (slash commands, components, modals) and webhook events."""

    kind = "discord"
    label = "Discord"
    cannot_sign_reason = (
        "Discord signs with the application's private key, which only Discord holds; Hookline stores the "
        "public key and can verify but not sign. Use Discord's own test tools (e.g. run a slash command)."
    )
    secret_help = (
        "Discord Developer Portal → Applications → your app → General Information → Public Key (64 hex "
        "characters). Then paste the Hookline URL as the Interactions Endpoint URL or the Webhook Events URL."
    )
    secret_generated_by_us = False
    options = (
        ProviderOption(
            name="tolerance",
            label="Timestamp tolerance (seconds)",
            help_text=(
                "If set, reject X-Signature-Timestamp further than this from now. 0 (the default) turns it off, "
                "like Discord's own library; the interaction id already catches replays."
            ),
            default=0,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "the X-Signature-Timestamp header"
    docs_verifies = (
        "X-Signature-Ed25519: hex Ed25519 signature of X-Signature-Timestamp + raw body, checked with the "
        "application's hex public key (the stored secret; Hookline cannot sign, so the test sender cannot send "
        "samples for Discord); a key of small order, which would verify forged signatures, is refused. "
        "Optional timestamp tolerance (off by default). Interaction PINGs are answered "
        'with {"type":1} and webhook-event PINGs with 204 after verification, and are not stored. '
        "Discord expects other interactions to be answered within 3 seconds with an interaction response, "
        "which Hookline's acknowledgement is not."
    )
    event_id_from = "interaction id in the body"
    docs_event_id = (
        "interaction `id` (a snowflake); webhook events have none, so sha256:<hex of body> (identical bytes "
        "count as a redelivery)"
    )
    docs_event_type = (
        "interactions: the interaction type's name (PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, "
        "APPLICATION_COMMAND_AUTOCOMPLETE, MODAL_SUBMIT; unknown numbers as type_<n>); webhook events: "
        "`event.type`, e.g. APPLICATION_AUTHORIZED"
    )

    def clean_secret(self, secret: str) -> str:
        secret = super().clean_secret(secret)
        if _PUBLIC_KEY.fullmatch(secret) and _has_small_order(bytes.fromhex(secret)):
            raise InvalidOptions(
                "that is not a usable public key (a point of small order, which would verify forged signatures); "
                "copy the Public Key from the Discord Developer Portal"
            )
        if _public_key(secret) is None:
            raise InvalidOptions(
                "a Discord public key is 64 hex characters (General Information → Public Key, not the bot token "
                "or client secret)"
            )
        return secret.lower()

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if the Ed25519 signature verifies under any configured public key."""
        signature = (request.header(SIGNATURE_HEADER) or "").strip()
        timestamp = (request.header(TIMESTAMP_HEADER) or "").strip()
        missing = [name for name, value in ((SIGNATURE_HEADER, signature), (TIMESTAMP_HEADER, timestamp)) if not value]
        if missing:
            raise VerificationError("missing_signature", headers_missing(missing))
        if not _SIGNATURE.fullmatch(signature):
            raise VerificationError("bad_format", f"the {SIGNATURE_HEADER} header must be 128 hex characters")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise VerificationError("bad_format", f"the {TIMESTAMP_HEADER} header is not a Unix time in seconds")
        keys = [key for key in (_public_key(s) for s in secrets) if key is not None]
        message = timestamp.encode() + request.body
        signature_bytes = bytes.fromhex(signature)
        if not any(_verifies(key, signature_bytes, message) for key in keys):
            raise VerificationError(
                "no_matching_secret",
                f"the {SIGNATURE_HEADER} signature does not verify with the application's public key "
                f"({counted(len(keys), 'usable key')} of {len(secrets)}); check the Public Key and that the raw body is "
                "unchanged",
            )
        check_timestamp_age(int(timestamp), now, tolerance_seconds(options, 0))

    def handshake(
        self, request: InboundRequest, secrets: Sequence[str], options: Mapping[str, Any]
    ) -> HandshakeResponse | None:
        """PONG for an interaction PING, 204 for a webhook-event PING (both after verification)."""
        payload = _payload(request.body)
        if not isinstance(payload, dict) or isinstance(payload.get("type"), bool):
            return None
        if _is_webhook_event(payload):
            return WEBHOOK_EVENT_PING_REPLY if payload.get("type") == 0 else None
        return PONG if payload.get("type") == 1 else None

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        return header_unix_time(request, TIMESTAMP_HEADER)

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Interaction id and type name; for webhook events, event.type and the body's digest."""
        payload = _payload(request.body)
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not a Discord interaction or webhook event object")
        kind = payload.get("type")
        if isinstance(kind, bool) or not isinstance(kind, int):
            raise MalformedPayload("the Discord payload has no integer 'type'")
        digest_id = "sha256:" + hashlib.sha256(request.body).hexdigest()
        if _is_webhook_event(payload):
            event_type = payload["event"].get("type") if isinstance(payload.get("event"), dict) else None
            if kind == 0:
                event_type = "PING"
            if not isinstance(event_type, str) or not event_type.strip():
                raise MalformedPayload("the Discord webhook event has no string 'event.type'")
            return EventInfo(event_id=digest_id, event_type=event_type.strip())
        interaction_id = payload.get("id")
        if isinstance(interaction_id, int) and not isinstance(interaction_id, bool):
            interaction_id = str(interaction_id)
        if not isinstance(interaction_id, str) or not interaction_id.strip():
            raise MalformedPayload("the Discord interaction has no 'id'")
        return EventInfo(event_id=interaction_id.strip(), event_type=INTERACTION_TYPES.get(kind, f"type_{kind}"))


def _verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
