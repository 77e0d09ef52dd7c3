"""Linear: ``linear-signature`` = lowercase hex HMAC-SHA256(signing secret, raw body).

Freshness comes from the signed body: ``webhookTimestamp`` (milliseconds) must be within 60 seconds of now,
either way, as in Linear's SDK (which checks the signature first, then the timestamp).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
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
    require_header,
    tolerance_seconds,
)

HEADER = "linear-signature"
DELIVERY_HEADER = "Linear-Delivery"
EVENT_HEADER = "Linear-Event"
TIMESTAMP_FIELD = "webhookTimestamp"
DEFAULT_TOLERANCE = 60
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def _signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8", "surrogatepass"), body, hashlib.sha256).hexdigest()


def _timestamp_ms(body: bytes) -> int | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = payload.get(TIMESTAMP_FIELD) if isinstance(payload, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e16:
        return None
    return int(value)


class LinearProvider(Provider):
    """Linear workspace and OAuth-app webhooks (issues, comments, projects, cycles…)."""

    kind = "linear"
    label = "Linear"
    secret_help = (
        "Linear → Settings → API → Webhooks → your webhook → Signing secret (shown once the webhook is created; "
        "for OAuth apps: the application's webhook signing secret)."
    )
    secret_generated_by_us = False
    options = (
        ProviderOption(
            name="tolerance",
            label="Timestamp tolerance (seconds)",
            help_text=(
                "Reject bodies whose webhookTimestamp is further than this from now, either way; 0 turns the "
                "check off. Linear's SDK uses 60."
            ),
            default=DEFAULT_TOLERANCE,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "webhookTimestamp in the signed body"
    docs_verifies = (
        "linear-signature: lowercase hex HMAC-SHA256 of the raw body keyed with the signing secret; then the "
        "body's webhookTimestamp (milliseconds) must be within `tolerance` seconds of now, either way (60 like "
        "Linear's SDK; 0 turns it off). The test sender refreshes webhookTimestamp in the body."
    )
    event_id_from = "Linear-Delivery header"
    docs_event_id = (
        "Linear-Delivery header (a per-delivery UUID; third-party sources only), else sha256:<hex of body> "
        "(identical bytes count as a redelivery). Linear-Delivery is not signed: a body equal to a stored "
        "event's is its duplicate whatever the header says"
    )
    # Linear-Delivery is not signed; webhookTimestamp is, which bounds a replay to the tolerance (60 s by
    # default, none when the tenant sets 0) but not within it. Every body carries its webhookTimestamp
    # in milliseconds and the entity it is about, so two events never share one.
    dedupes_on_signed_content = True
    docs_event_type = '"<type>.<action>" from the payload, e.g. Issue.create, Comment.remove (just type without action)'

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Signature first, then webhookTimestamp, like Linear's SDK."""
        value = require_header(request, HEADER)
        if not _HEX.fullmatch(value):
            raise VerificationError("bad_format", f"the {HEADER} header must be a 64-character hex SHA-256 HMAC")
        candidate = value.lower().encode()
        if not any(constant_time_equal(_signature(s, request.body).encode(), candidate) for s in secrets if s):
            raise VerificationError(
                "no_matching_secret",
                f"the {HEADER} signature does not match the webhook's signing secret ({counted(len(secrets), 'secret')} "
                "tried); check the secret and that the raw body is unchanged",
            )
        tolerance = tolerance_seconds(options, DEFAULT_TOLERANCE)
        if not tolerance:
            return
        timestamp_ms = _timestamp_ms(request.body)
        if timestamp_ms is None:
            raise VerificationError(
                "bad_format",
                f"the signed body has no numeric {TIMESTAMP_FIELD}; set the tolerance to 0 to accept it anyway",
            )
        check_timestamp_age(timestamp_ms / 1000, now, tolerance, what=TIMESTAMP_FIELD, unit="milliseconds")

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        timestamp_ms = _timestamp_ms(request.body)
        return timestamp_ms / 1000 if timestamp_ms is not None else None

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Type is "<type>.<action>"; id from Linear-Delivery, else the body's digest."""
        payload = request.json()
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not a Linear webhook object")
        kind, action = payload.get("type"), payload.get("action")
        if not isinstance(kind, str) or not kind.strip():
            raise MalformedPayload("the Linear payload has no string 'type'")
        event_type = kind.strip()
        if isinstance(action, str) and action.strip():
            event_type = f"{event_type}.{action.strip()}"
        delivery = (request.header(DELIVERY_HEADER) or "").strip()
        return EventInfo(
            event_id=delivery or "sha256:" + hashlib.sha256(request.body).hexdigest(), event_type=event_type
        )

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
        """linear-signature, plus Linear-Delivery / Linear-Event when given (a fixture's recorded ones stay).

        The body's webhookTimestamp is what makes a request fresh: see prepare_body().
        """
        headers = {HEADER: _signature(secret, body)}
        if event_id:
            headers[DELIVERY_HEADER] = event_id
        if event_type:
            headers[EVENT_HEADER] = event_type.split(".", 1)[0]
        return headers

    def prepare_body(self, body: bytes, secret: str, options: Mapping[str, Any], now: float) -> bytes:
        """``body`` with webhookTimestamp set to ``now`` (ms), so a replayed sample is fresh.

        Bodies that are not JSON objects are returned unchanged.
        """
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return body
        if not isinstance(payload, dict):
            return body
        payload[TIMESTAMP_FIELD] = int(now * 1000)
        return json.dumps(payload, indent=2).encode()
