"""Zoom: ``x-zm-signature: v0=<hex>``, HMAC-SHA256 over ``"v0:<x-zm-request-timestamp>:<raw body>"``.

The ``endpoint.url_validation`` challenge is signed like any event; it is verified first and
then answered with ``{"plainToken", "encryptedToken"}``.
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
    HandshakeResponse,
    InboundRequest,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    check_timestamp_age,
    constant_time_equal,
    counted,
    header_unix_time,
    json_field,
    require_header,
    tolerance_seconds,
)

SIGNATURE_HEADER = "x-zm-signature"
TIMESTAMP_HEADER = "x-zm-request-timestamp"
DEFAULT_TOLERANCE = 300
URL_VALIDATION = "endpoint.url_validation"
_TIMESTAMP = re.compile(r"\d{1,15}")
_SIGNATURE = re.compile(r"v0=([0-9a-fA-F]{64})")


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _signature(secret: str, timestamp: str, body: bytes) -> str:
    return "v0=" + _hmac_hex(secret, f"v0:{timestamp}:".encode() + body)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


class ZoomProvider(Provider):
    """Zoom webhook-only / general apps (event subscriptions with a Secret Token)."""

    kind = "zoom"
    label = "Zoom"
    secret_help = (
        "Zoom App Marketplace → Manage → your app → Features → Access → Secret Token "
        "(not the Verification Token, not the client secret)."
    )
    secret_generated_by_us = False
    options = (
        ProviderOption(
            name="tolerance",
            label="Timestamp tolerance (seconds)",
            help_text=(
                "Reject requests whose x-zm-request-timestamp is further than this from now, either way; "
                "0 turns the check off. Zoom documents none; 300 is our default."
            ),
            default=DEFAULT_TOLERANCE,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "the x-zm-request-timestamp header"
    docs_verifies = (
        'x-zm-signature: v0=<hex HMAC-SHA256 of "v0:<x-zm-request-timestamp>:<raw body>"> keyed with the app\'s '
        "Secret Token (Zoom's sample re-serialises the JSON; we hash the raw body as received). The timestamp must be "
        "within `tolerance` seconds of now, either way [UNCONFIRMED: Zoom documents no window; 300 s is ours]. "
        "endpoint.url_validation is verified like any event, then answered 200 with "
        '{"plainToken": …, "encryptedToken": hex HMAC-SHA256(Secret Token, plainToken)}.'
    )
    # The id hashes the payload: a new meeting instance uuid makes a new event.
    sample_event_id_path = ("payload", "object", "uuid")
    event_id_from = "made from the body: Zoom sends none"
    docs_event_id = (
        "Zoom sends no event id [UNCONFIRMED]; derived as "
        '"<event>:<event_ts>:<first 32 hex of SHA-256 of the `payload` object re-serialised with sorted keys>" '
        "(so retries of one event collide, and two participants joining in the same millisecond do not); "
        'without event_ts or payload: "sha256:<hex of the raw body>".'
    )
    docs_event_type = "payload `event`, e.g. meeting.started"

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Check the timestamp window, then the v0 signature against any secret."""
        timestamp, candidate = _parse(request)
        check_timestamp_age(int(timestamp), now, tolerance_seconds(options, DEFAULT_TOLERANCE))
        if _matching_secret(request.body, secrets, timestamp, candidate) is None:
            raise VerificationError(
                "no_matching_secret",
                f"the v0 signature does not match the Secret Token ({counted(len([s for s in secrets if s]), 'secret')} "
                "tried); check the Secret Token and that the raw body is unchanged",
            )

    def handshake(
        self, request: InboundRequest, secrets: Sequence[str], options: Mapping[str, Any]
    ) -> HandshakeResponse | None:
        """endpoint.url_validation: hash plainToken with the secret that signed the (already verified) request."""
        payload = _json_object(request.body)
        if payload is None or payload.get("event") != URL_VALIDATION:
            return None
        plain_token = json_field(payload, "payload", "plainToken")
        if not isinstance(plain_token, str) or not plain_token:
            return HandshakeResponse(
                400,
                json.dumps(
                    {"error": "malformed_payload", "detail": "url_validation without payload.plainToken"}
                ).encode(),
            )
        secret = None
        try:
            timestamp, candidate = _parse(request)
            secret = _matching_secret(request.body, secrets, timestamp, candidate)
        except VerificationError:
            pass
        if secret is None:  # only reachable when called without verify(); answer nothing useful
            return HandshakeResponse(
                401, json.dumps({"error": "no_matching_secret", "detail": "the request is not signed"}).encode()
            )
        encrypted = _hmac_hex(secret, plain_token.encode("utf-8", "surrogatepass"))
        return HandshakeResponse(
            200, json.dumps({"plainToken": plain_token, "encryptedToken": encrypted}).encode(), "application/json"
        )

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        return header_unix_time(request, TIMESTAMP_HEADER)

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Type from `event`; the id is derived (see docs_event_id)."""
        payload = request.json()
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not a Zoom event object")
        event = payload.get("event")
        if not isinstance(event, str) or not event:
            raise MalformedPayload("the Zoom event has no string 'event'")
        return EventInfo(event_id=derived_event_id(payload, request.body), event_type=event)

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
        """The two headers Zoom sends; the type lives in the body and the id is derived from it."""
        timestamp = str(int(now))
        return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: _signature(secret, timestamp, body)}


def derived_event_id(payload: dict[str, Any], body: bytes) -> str:
    """``<event>:<event_ts>:<hash of payload>``, or ``sha256:<hex of body>`` when the fields are missing."""
    event, event_ts, inner = payload.get("event"), payload.get("event_ts"), payload.get("payload")
    if (
        isinstance(event, str)
        and isinstance(event_ts, int | str)
        and not isinstance(event_ts, bool)
        and inner is not None
    ):
        try:
            canonical = json.dumps(inner, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        except (ValueError, RecursionError):  # pragma: no cover - it came from json.loads
            canonical = None
        if canonical is not None:
            digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
            return f"{event}:{event_ts}:{digest}"[:255]
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _parse(request: InboundRequest) -> tuple[str, str]:
    signature = require_header(request, SIGNATURE_HEADER)
    timestamp = require_header(request, TIMESTAMP_HEADER)
    if not _TIMESTAMP.fullmatch(timestamp):
        raise VerificationError("bad_format", f"the {TIMESTAMP_HEADER} header is not a Unix time in seconds")
    match = _SIGNATURE.fullmatch(signature)
    if match is None:
        raise VerificationError("bad_format", f"the {SIGNATURE_HEADER} header is not v0=<64 hex digits>")
    return timestamp, "v0=" + match.group(1).lower()


def _matching_secret(body: bytes, secrets: Sequence[str], timestamp: str, candidate: str) -> str | None:
    found = None
    for secret in secrets:
        if secret and constant_time_equal(_signature(secret, timestamp, body), candidate) and found is None:
            found = secret
    return found
