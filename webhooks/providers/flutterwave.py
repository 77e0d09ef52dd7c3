"""Flutterwave: v3 ``verif-hash`` (the secret hash verbatim) and v4 ``flutterwave-signature``.

How v4 signs is [UNCONFIRMED] (providers.md §8): third-party code computes base64 HMAC-SHA256(secret hash,
raw body), a mirror of Flutterwave's docs compares the header to the secret hash itself. Both are accepted
until Flutterwave's own material settles it; the ``require_signature`` option accepts only the HMAC form.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from .base import (
    EventInfo,
    InboundRequest,
    MalformedPayload,
    Provider,
    ProviderOption,
    VerificationError,
    counted,
    header_carries_secret,
)

V3_HEADER = "verif-hash"
V4_HEADER = "flutterwave-signature"


def _encode(text: str) -> bytes:
    # surrogatepass: garbage in a header must fail to match, not raise.
    return text.encode("utf-8", "surrogatepass")


def _hmac(secret: str, body: bytes) -> bytes:
    return hmac.new(_encode(secret), body, hashlib.sha256).digest()


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _require_signature(options: Mapping[str, Any]) -> bool:
    value = options.get("require_signature")
    return value is True or (isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"})


class FlutterwaveProvider(Provider):
    """Flutterwave payment, transfer and subscription events (API v3 and v4)."""

    kind = "flutterwave"
    label = "Flutterwave"
    secret_help = (
        "Flutterwave Dashboard → Settings → Webhooks → Secret hash. You choose it (Hookline can generate one to "
        "paste there); it is not your API secret key."
    )
    secret_generated_by_us = True
    options = (
        ProviderOption(
            name="require_signature",
            label="Require the v4 HMAC signature",
            help_text=(
                "Accept only flutterwave-signature = base64 HMAC-SHA256 of the body (refuses v3 verif-hash and a "
                "v4 header holding the plain secret hash). Leave off unless your webhooks are v4 and signed."
            ),
            default=False,
            kind="bool",
        ),
    )
    docs_verifies = (
        "v3: the verif-hash header equals the secret hash (constant time; the body is not signed). "
        "v4: flutterwave-signature, accepted as base64 HMAC-SHA256 of the raw body keyed with the secret hash, or "
        "as the secret hash itself [UNCONFIRMED: sources disagree on which v4 sends, so both are supported; "
        "option require_signature keeps only the HMAC form]. When flutterwave-signature is present it alone "
        "decides. No timestamp. Both headers are treated as secrets and never stored."
    )
    sample_event_id_path = ("data", "id")
    event_id_from = "event and data.id in the body"
    docs_event_id = (
        "'<event type>:<data.id>', e.g. charge.completed:4975363 (the type keeps transaction and transfer ids "
        "apart); sha256:<hex of body> when data has no id"
    )
    docs_event_type = "payload `event` (v3, e.g. charge.completed), else `type` (v4)"

    def secret_header_names(self, options: Mapping[str, Any]) -> set[str]:
        # verif-hash is the secret itself, and v4's header may be too (see docs_verifies).
        return {V3_HEADER, V4_HEADER}

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """flutterwave-signature if present (HMAC or plain hash), else verif-hash (plain hash)."""
        usable = [s for s in secrets if s]
        strict = _require_signature(options)
        signature = (request.header(V4_HEADER) or "").strip()
        if signature:
            digest = _b64(signature)
            if digest is not None and len(digest) == hashlib.sha256().digest_size:
                if any(hmac.compare_digest(_hmac(s, request.body), digest) for s in usable):
                    return
            if not strict and any(header_carries_secret(signature, s) for s in usable):
                return
            raise VerificationError(
                "no_matching_secret",
                f"the {V4_HEADER} header matches neither the HMAC of the body nor the secret hash "
                f"({counted(len(usable), 'secret hash', 'secret hashes')} tried); check the secret hash in Flutterwave's webhook settings",
            )
        if strict:
            raise VerificationError(
                "missing_signature",
                f"the {V4_HEADER} header is missing; this source accepts only signed (v4) webhooks",
            )
        value = (request.header(V3_HEADER) or "").strip()
        if not value:
            raise VerificationError(
                "missing_signature",
                f"neither the {V3_HEADER} (v3) nor the {V4_HEADER} (v4) header is present; "
                "set a secret hash in Flutterwave's webhook settings",
            )
        if not any(header_carries_secret(value, s) for s in usable):
            raise VerificationError(
                "no_matching_secret",
                f"the {V3_HEADER} header does not match the secret hash ({counted(len(usable), 'secret hash', 'secret hashes')} tried)",
            )

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Type from `event` (v3) or `type` (v4); id from data.id, prefixed by the type."""
        payload = request.json()
        if not isinstance(payload, dict):
            raise MalformedPayload("the body is not a Flutterwave event object")
        event_type = next(
            (v.strip() for v in (payload.get("event"), payload.get("type")) if isinstance(v, str) and v.strip()), None
        )
        if event_type is None:
            raise MalformedPayload("the Flutterwave event has no string 'event' (v3) or 'type' (v4)")
        data = payload.get("data")
        data_id = _text(data.get("id")) if isinstance(data, dict) else None
        if data_id is None:
            return EventInfo(event_id="sha256:" + hashlib.sha256(request.body).hexdigest(), event_type=event_type)
        return EventInfo(event_id=f"{event_type}:{data_id}", event_type=event_type)

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
        """The v4 HMAC form (the only one that protects the body); id and type live in the body."""
        return {V4_HEADER: base64.b64encode(_hmac(secret, body)).decode()}
