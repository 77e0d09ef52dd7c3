"""X (Twitter) Account Activity webhooks.

Deliveries: ``x-twitter-webhooks-signature: sha256=<base64 HMAC-SHA256(consumer secret, raw body)>``.
CRC: ``GET ?crc_token=…`` answered with ``{"response_token": "sha256=<base64 HMAC-SHA256(consumer secret, crc_token)>"}``.

The CRC answer is an HMAC oracle under the very key and construction that sign deliveries
(X's design): whoever can GET the URL obtains the signature of any string sent as crc_token.
We therefore only answer tokens made of characters that cannot start or make up a JSON
object, so an answer can never be replayed as the signature of a delivery that describe() accepts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .base import (
    EventInfo,
    HandshakeResponse,
    InboundRequest,
    MalformedPayload,
    Provider,
    VerificationError,
    constant_time_equal,
    counted,
    require_header,
)

SIGNATURE_HEADER = "x-twitter-webhooks-signature"
# X's tokens are opaque random strings; this set is base64, base64url and a few separators, no '{', '"' or spaces.
_CRC_TOKEN = re.compile(r"[A-Za-z0-9+/=_.~:-]{1,256}")


def _digest(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def _header_value(secret: str, message: bytes) -> str:
    return "sha256=" + base64.b64encode(_digest(secret, message)).decode()


def _crc_token(request: InboundRequest) -> str | None:
    values = request.query.get("crc_token") if request.query else None
    if not values and request.url:
        try:
            values = parse_qs(urlsplit(request.url).query, keep_blank_values=True).get("crc_token")
        except ValueError:
            values = None
    if not values:
        return None
    return values[0] if isinstance(values, list | tuple) else str(values)


class XProvider(Provider):
    """X (formerly Twitter) Account Activity API / v2 webhooks."""

    kind = "x"
    label = "X (Twitter)"
    secret_help = (
        "X Developer Portal → Projects & Apps → your app → Keys and tokens → Consumer Keys → API Key Secret "
        "(the consumer secret of the app that registered the webhook)."
    )
    secret_generated_by_us = False
    options = ()
    docs_verifies = (
        "x-twitter-webhooks-signature: sha256=<base64 HMAC-SHA256 of the raw body> keyed with the app's consumer "
        "secret [header per third-party sources; X documents the CRC]. No timestamp, so no replay window. "
        'The CRC check (GET ?crc_token=…) is answered with {"response_token": "sha256=<base64 HMAC-SHA256 of '
        'crc_token>"} using the current secret; tokens outside [A-Za-z0-9+/=_.~:-], or longer than 256 characters, '
        "are refused with 400, because the answer is a signature under the delivery key."
    )
    event_id_from = "made from the body: X sends none"
    docs_event_id = (
        'derived: "<for_user_id>:<type>:<id_str or id of the first event>" (tweet, favorite and direct-message '
        'events carry one); otherwise "sha256:<hex of the raw body>".'
    )
    docs_event_type = (
        'the first top-level key ending in "_events", e.g. tweet_create_events, favorite_events, '
        'follow_events, direct_message_events; else one ending in "_event" (user_event for revocations).'
    )

    def unsigned_handshake(
        self, request: InboundRequest, secrets: Sequence[str], options: Mapping[str, Any]
    ) -> HandshakeResponse | None:
        """The CRC GET. It proves we hold the consumer secret; nothing is stored."""
        if request.method != "GET":
            return None
        token = _crc_token(request)
        if token is None:
            return None
        if not _CRC_TOKEN.fullmatch(token):
            return HandshakeResponse(
                400,
                json.dumps(
                    {"error": "bad_format", "detail": "crc_token must be 1-256 characters of [A-Za-z0-9+/=_.~:-]"}
                ).encode(),
            )
        secret = next((s for s in secrets if s), None)
        if secret is None:
            return HandshakeResponse(
                503, json.dumps({"error": "no_secret", "detail": "the source has no consumer secret"}).encode()
            )
        body = json.dumps({"response_token": _header_value(secret, token.encode())}).encode()
        return HandshakeResponse(200, body, "application/json")

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Any secret may match the base64 signature; there is no timestamp."""
        value = require_header(request, SIGNATURE_HEADER)
        algorithm, sep, encoded = value.partition("=")
        if not sep or algorithm.strip().lower() != "sha256":
            raise VerificationError("bad_format", f"the {SIGNATURE_HEADER} header is not sha256=<base64>")
        try:
            candidate = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise VerificationError("bad_format", f"the {SIGNATURE_HEADER} value after sha256= is not base64") from None
        expected = [_digest(secret, request.body) for secret in secrets if secret]
        if not any(constant_time_equal(e, candidate) for e in expected):
            raise VerificationError(
                "no_matching_secret",
                f"the signature does not match the consumer secret ({counted(len(expected), 'secret')} tried); "
                "check the app's API Key Secret and that the raw body is unchanged",
            )

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        payload = request.json()
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not an X activity object")
        event_type = next((k for k in payload if isinstance(k, str) and k.endswith("_events")), None)
        if event_type is None:
            event_type = next((k for k in payload if isinstance(k, str) and k.endswith("_event")), None)
        if event_type is None:
            raise MalformedPayload('the X activity has no "…_events" key')
        return EventInfo(event_id=_event_id(payload, event_type, request.body), event_type=event_type)

    def with_sample_event_id(self, payload: Any, fresh_id: str) -> Any:
        """X's id is the first activity's ``id_str``/``id`` under the ``…_events`` key."""
        events = (
            next((v for k, v in payload.items() if k.endswith("_events")), None) if isinstance(payload, dict) else None
        )
        if isinstance(events, list) and events and isinstance(events[0], dict):
            number = str(int(fresh_id[:15], 16))
            events[0].update({key: number for key in ("id_str", "id") if key in events[0]})
            return payload
        return super().with_sample_event_id(payload, fresh_id)

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
        """The signature header; id and type are derived from the body, so they are ignored."""
        return {SIGNATURE_HEADER: _header_value(secret, body)}


def crc_response_token(secret: str, crc_token: str) -> str:
    """``sha256=<base64>`` for a CRC token (what X expects as response_token)."""
    return _header_value(secret, crc_token.encode())


def _event_id(payload: dict[str, Any], event_type: str, body: bytes) -> str:
    user = payload.get("for_user_id")
    events = payload.get(event_type)
    first = events[0] if isinstance(events, list) and events else None
    event_id = None
    if isinstance(first, dict):
        for key in ("id_str", "id"):
            value = first.get(key)
            if (isinstance(value, str) and value) or (isinstance(value, int) and not isinstance(value, bool)):
                event_id = str(value)
                break
    if isinstance(user, str | int) and not isinstance(user, bool) and str(user) and event_id:
        return f"{user}:{event_type}:{event_id}"[:255]
    return "sha256:" + hashlib.sha256(body).hexdigest()
