"""Standard Webhooks (Svix, Clerk, Resend, Supabase Auth Hooks…): base64 HMAC-SHA256 over ``"<id>.<ts>.<body>"``.

Both header families are read: ``svix-*`` first, then ``webhook-*``, like the svix library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
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
    check_timestamp_age,
    constant_time_equal,
    counted,
    headers_missing,
    signatures_do_not_match,
    tolerance_seconds,
)

DEFAULT_TOLERANCE = 300
FAMILIES = ("svix", "webhook")
_TIMESTAMP = re.compile(r"\d{1,15}")


def decode_secret(secret: str) -> bytes:
    """The HMAC key of ``whsec_<base64>`` (also ``v1,whsec_…`` and unpadded base64); ValueError if unusable."""
    text = secret.strip()
    if text.startswith("v1,"):
        text = text[3:]
    if text.startswith("whsec_"):
        text = text[len("whsec_") :]
    text = text.rstrip("=")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if not key:
        raise ValueError("empty key")
    return key


def _signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    # surrogatepass: a garbage id must fail to match, not raise.
    prefix = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogatepass")
    return hmac.new(key, prefix + body, hashlib.sha256).digest()


def _headers(request: InboundRequest) -> tuple[str, str, str, str]:
    """(family, id, timestamp, signature) from the first complete header family."""
    for family in FAMILIES:
        values = [(request.header(f"{family}-{part}") or "").strip() for part in ("id", "timestamp", "signature")]
        if all(values):
            return family, values[0], values[1], values[2]
    # Name what is missing in the family the sender evidently uses.
    family = next(
        (f for f in FAMILIES if any(request.header(f"{f}-{p}") for p in ("id", "timestamp", "signature"))),
        "webhook",
    )
    missing = [
        f"{family}-{p}" for p in ("id", "timestamp", "signature") if not (request.header(f"{family}-{p}") or "").strip()
    ]
    raise VerificationError("missing_signature", headers_missing(missing))


def _message_id(request: InboundRequest) -> str | None:
    """The id of the header family verify() checks (the same selection rule), never the other family's:
    an unsigned ``svix-id`` added to a request signed with ``webhook-*`` must not change its event id."""
    try:
        return _headers(request)[1]
    except VerificationError:
        return None


class StandardWebhooksProvider(Provider):
    """Senders following the Standard Webhooks spec, including Svix-powered ones and Clerk."""

    kind = "standard_webhooks"
    label = "Standard Webhooks / Svix / Clerk"
    secret_help = (
        "The endpoint's signing secret, starting with whsec_: Clerk Dashboard → Webhooks → your endpoint → "
        "Signing Secret; Svix App Portal → endpoint → Signing Secret; Supabase Auth Hooks show it as v1,whsec_…."
    )
    secret_generated_by_us = False
    options = (
        ProviderOption(
            name="tolerance",
            label="Timestamp tolerance (seconds)",
            help_text="Reject timestamps further than this in the past or future; 0 turns the check off. The spec uses 300.",
            default=DEFAULT_TOLERANCE,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "the webhook-timestamp (or svix-timestamp) header"
    docs_verifies = (
        "webhook-signature (or svix-signature): space-separated v1,<base64 HMAC-SHA256> entries over "
        '"<id>.<timestamp>.<raw body>", keyed with the base64-decoded whsec_ secret; any v1 may match; '
        "the timestamp must be within `tolerance` seconds of now, either way."
    )
    event_id_from = "webhook-id or svix-id header"
    docs_event_id = (
        "svix-id / webhook-id header of the header set that was verified (the same on every retry): svix-* when "
        "all three svix-* headers are present, else webhook-*"
    )
    docs_event_type = (
        "payload `type`, e.g. user.created; empty when the body has no string `type` or is not JSON "
        "(the spec requires neither, so such a signed request is accepted)"
    )

    def clean_secret(self, secret: str) -> str:
        secret = super().clean_secret(secret)
        try:
            decode_secret(secret)
        except ValueError:
            raise InvalidOptions(
                "the secret must be whsec_ followed by base64 (as shown in the sender's dashboard)"
            ) from None
        return secret

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Check the timestamp window first (as the libraries do), then any v1 signature against any secret."""
        family, msg_id, timestamp, signature_header = _headers(request)
        if not _TIMESTAMP.fullmatch(timestamp):
            raise VerificationError("bad_format", f"the {family}-timestamp header is not a Unix time in seconds")
        tolerance = tolerance_seconds(options, DEFAULT_TOLERANCE)
        if tolerance and len(timestamp.lstrip("0")) >= 13 and int(timestamp) - now > tolerance:
            # 13+ digits is tens of thousands of years away in seconds: a sender writing milliseconds.
            raise VerificationError(
                "timestamp_out_of_tolerance",
                f"the {family}-timestamp header ({timestamp}) looks like milliseconds since the epoch; "
                f"it must be a Unix time in seconds (now is {int(now)})",
            )
        check_timestamp_age(int(timestamp), now, tolerance)

        candidates: list[bytes] = []
        versions: set[str] = set()
        for entry in signature_header.split():
            version, sep, value = entry.partition(",")
            if not sep:
                continue
            versions.add(version[:12])
            if version != "v1":
                continue  # v1a (Ed25519) and future versions are not verified here
            try:
                candidates.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
        if not versions:
            raise VerificationError("bad_format", f"the {family}-signature header has no '<version>,<base64>' entries")
        if not candidates:
            found = ", ".join(sorted(versions)[:5])
            raise VerificationError(
                "bad_format", f"the {family}-signature header has no usable v1 signature (versions found: {found})"
            )

        keys = []
        for secret in secrets:
            try:
                keys.append(decode_secret(secret))
            except ValueError:
                continue
        expected = [_signature(key, msg_id, timestamp, request.body) for key in keys]
        if not any(constant_time_equal(e, c) for e in expected for c in candidates):
            raise VerificationError(
                "no_matching_secret",
                f"{signatures_do_not_match(len(candidates), 'v1')} the signing secret "
                f"({counted(len(keys), 'secret')} tried); check the whsec_ secret and that the raw body is unchanged",
            )

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        try:
            timestamp = _headers(request)[2]
        except VerificationError:
            return None
        return float(timestamp) if _TIMESTAMP.fullmatch(timestamp) else None

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Id from the message-id header of the verified header family, type from the payload's ``type``.

        The spec prescribes no payload structure (not even JSON), so a signed body without a string
        ``type`` is still an event, with type "": it is never refused as malformed."""
        try:
            payload = request.json()
        except MalformedPayload:
            payload = None
        event_type = payload.get("type") if isinstance(payload, dict) else None
        return EventInfo(event_id=_message_id(request), event_type=event_type if isinstance(event_type, str) else "")

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
        """The webhook-* headers of the spec; the type lives in the body, so event_type is ignored."""
        msg_id = event_id or f"msg_{uuid.uuid4().hex}"
        timestamp = str(int(now))
        signature = base64.b64encode(_signature(decode_secret(secret), msg_id, timestamp, body)).decode()
        return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}"}
