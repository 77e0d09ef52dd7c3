"""SendGrid (Twilio SendGrid) Event Webhook: ECDSA P-256 / SHA-256 over ``timestamp + raw body``.

Headers ``X-Twilio-Email-Event-Webhook-Signature`` (base64 DER signature) and
``X-Twilio-Email-Event-Webhook-Timestamp``. The stored "secret" is the verification key SendGrid shows
(base64 SPKI, or the same wrapped in PEM), so Hookline can verify but never sign.
The body is a JSON array of events, delivered in batches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from .base import (
    EventInfo,
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

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
BATCH_TYPE = "batch"
_TIMESTAMP = re.compile(r"\d{1,15}")
_MAX_SIGNATURE = 200  # a DER P-256 signature is at most 72 bytes


def load_public_key(secret: str) -> ec.EllipticCurvePublicKey | None:
    """The P-256 public key in ``secret`` (base64 SPKI or PEM), or None."""
    text = (secret or "").strip()
    try:
        if "-----BEGIN" in text:
            key = load_pem_public_key(text.encode("ascii"))
        else:
            der = base64.b64decode("".join(text.split()), validate=True)
            key = load_der_public_key(der)
    except (ValueError, TypeError, UnicodeError, binascii.Error, UnsupportedAlgorithm):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    return key


class SendGridProvider(Provider):
    """SendGrid Event Webhook (processed, delivered, open, click, bounce, dropped, spamreport…)."""

    kind = "sendgrid"
    label = "SendGrid Event Webhook"
    cannot_sign_reason = (
        "SendGrid signs with its private key; Hookline stores only the public verification key and cannot "
        "sign. Use SendGrid's 'Test Your Integration' button on the Event Webhook settings page."
    )
    secret_help = (
        "SendGrid → Settings → Mail Settings → Event Webhooks → your webhook → Security features → enable Signed "
        "Event Webhook → Verification Key (the base64 public key, starting MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE)."
    )
    secret_generated_by_us = False
    options = (
        ProviderOption(
            name="tolerance",
            label="Timestamp tolerance (seconds)",
            help_text=(
                "If set, reject a signature timestamp further than this from now. 0 (the default) turns it off, "
                "like SendGrid's own library."
            ),
            default=0,
            kind="int",
            min_value=0,
        ),
    )
    docs_signed_time = "the X-Twilio-Email-Event-Webhook-Timestamp header"
    docs_verifies = (
        "X-Twilio-Email-Event-Webhook-Signature: base64 DER ECDSA P-256/SHA-256 signature of "
        "X-Twilio-Email-Event-Webhook-Timestamp + raw body, checked with the Verification Key (base64 SPKI public "
        "key, the stored secret; Hookline cannot sign, so the test sender cannot send samples for SendGrid). "
        "Optional timestamp tolerance (off by default, as in SendGrid's library)."
    )
    event_id_from = "sg_event_id in the body"
    docs_event_id = (
        "one event in the batch: its `sg_event_id`; several: sha256:<hex of the sorted sg_event_ids joined by "
        "newlines> (the same batch resent gets the same id, a regrouped batch a new one, so no event is dropped); "
        "sha256:<hex of body> when an event lacks sg_event_id"
    )
    docs_event_type = (
        'the events\' common `event` (e.g. delivered) when every event in the batch has the same one, else "batch"'
    )

    def clean_secret(self, secret: str) -> str:
        secret = super().clean_secret(secret)
        if load_public_key(secret) is None:
            raise InvalidOptions(
                "the Verification Key must be SendGrid's base64 P-256 public key (or the same in PEM), not an API key"
            )
        return secret

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if the ECDSA signature verifies under any configured verification key."""
        signature = (request.header(SIGNATURE_HEADER) or "").strip()
        timestamp = (request.header(TIMESTAMP_HEADER) or "").strip()
        missing = [name for name, value in ((SIGNATURE_HEADER, signature), (TIMESTAMP_HEADER, timestamp)) if not value]
        if missing:
            raise VerificationError(
                "missing_signature",
                f"{headers_missing(missing)}; enable Signed Event Webhook in SendGrid",
            )
        if not _TIMESTAMP.fullmatch(timestamp):
            raise VerificationError("bad_format", f"the {TIMESTAMP_HEADER} header is not a Unix time in seconds")
        try:
            der = base64.b64decode(signature, validate=True) if len(signature) <= _MAX_SIGNATURE else b""
        except (binascii.Error, ValueError):
            der = b""
        if not der:
            raise VerificationError("bad_format", f"the {SIGNATURE_HEADER} header is not a base64 ECDSA signature")
        keys = [key for key in (load_public_key(s) for s in secrets) if key is not None]
        message = timestamp.encode() + request.body
        if not any(_verifies(key, der, message) for key in keys):
            raise VerificationError(
                "no_matching_secret",
                f"the {SIGNATURE_HEADER} signature does not verify with the verification key ({counted(len(keys), 'usable key')} "
                f"of {len(secrets)}); check the key and that the raw body is unchanged",
            )
        check_timestamp_age(int(timestamp), now, tolerance_seconds(options, 0))

    def signed_time(self, request: InboundRequest, options: Mapping[str, Any]) -> float | None:
        return header_unix_time(request, TIMESTAMP_HEADER)

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Id and type of the batch, as documented in docs_event_id / docs_event_type."""
        events = request.json()
        if not isinstance(events, list) or not events or not all(isinstance(e, dict) for e in events):
            raise MalformedPayload("the body is not a non-empty JSON array of SendGrid events")
        names = [e.get("event") for e in events]
        if not all(isinstance(t, str) and t.strip() for t in names):
            raise MalformedPayload("a SendGrid event has no string 'event'")
        types = {t.strip() for t in names}
        event_type = types.pop() if len(types) == 1 else BATCH_TYPE
        ids = [e.get("sg_event_id") for e in events]
        if not all(isinstance(i, str) and i for i in ids):
            return EventInfo(event_id="sha256:" + hashlib.sha256(request.body).hexdigest(), event_type=event_type)
        if len(ids) == 1:
            return EventInfo(event_id=ids[0], event_type=event_type)
        joined = "\n".join(sorted(ids)).encode("utf-8", "surrogatepass")
        return EventInfo(event_id="sha256:" + hashlib.sha256(joined).hexdigest(), event_type=event_type)


def _verifies(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
