"""Shopify: ``X-Shopify-Hmac-Sha256`` = base64 HMAC-SHA256(app client secret, raw body).

The newer "events" webhooks send the same HMAC under un-prefixed names (``shopify-hmac-sha256``…).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .base import (
    EventInfo,
    InboundRequest,
    Provider,
    ProviderOption,
    VerificationError,
    constant_time_equal,
    counted,
)

HMAC_HEADERS = ("shopify-hmac-sha256", "X-Shopify-Hmac-Sha256")  # the library checks the un-prefixed one first
TOPIC_HEADERS = ("shopify-topic", "X-Shopify-Topic")
EVENT_ID_HEADERS = ("shopify-event-id", "X-Shopify-Event-Id")
WEBHOOK_ID_HEADERS = ("shopify-webhook-id", "X-Shopify-Webhook-Id")


def _digest(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()


def _first_header(request: InboundRequest, names: Sequence[str]) -> tuple[str, str] | None:
    for name in names:
        value = request.header(name)
        if value is not None and value.strip():
            return name, value.strip()
    return None


class ShopifyProvider(Provider):
    """Shopify app webhooks (subscribed through the API or shopify.app.toml)."""

    kind = "shopify"
    label = "Shopify"
    secret_help = (
        "Shopify Partner Dashboard / Dev Dashboard → your app → Settings → Client credentials → Client secret "
        "(API secret key). Webhooks created in the store admin's Notifications page use that page's signing key instead."
    )
    secret_generated_by_us = False
    docs_verifies = (
        "X-Shopify-Hmac-Sha256 (or shopify-hmac-sha256): base64 HMAC-SHA256 of the raw body keyed with the "
        "app's client secret. An empty body is refused. There is no timestamp."
    )
    event_id_from = "X-Shopify-Event-Id or X-Shopify-Webhook-Id header"
    docs_event_id = (
        "X-Shopify-Event-Id (same across duplicate deliveries), else X-Shopify-Webhook-Id. Neither is signed: "
        "with the `merge_identical_bodies` option, a body equal to a stored event's is its duplicate whatever "
        "the headers say"
    )
    # Off by default: Shopify can send distinct events (their own X-Shopify-Event-Id) whose bodies are
    # byte for byte the same, such as several customers/update for one save, and a tenant whose
    # receiver counts them would lose one. Retries resend the original payload with the same event id,
    # so with the option on they are still duplicates.
    options = (
        ProviderOption(
            name="merge_identical_bodies",
            label="Treat a body already received as a duplicate",
            help_text=(
                "Shopify signs the body but not X-Shopify-Event-Id, so a captured webhook posted again with a "
                "new id is otherwise stored and delivered again. On: a body equal to one stored for this source "
                "is a duplicate of that event, which also merges distinct events Shopify sends with identical "
                "bodies (such as repeated customers/update for one save)."
            ),
            default=False,
            kind="bool",
        ),
    )
    docs_signed_content_when = "with its `merge_identical_bodies` option"
    docs_event_type = "X-Shopify-Topic header, e.g. orders/create"

    def verify(
        self,
        request: InboundRequest,
        secrets: Sequence[str],
        options: Mapping[str, Any],
        now: float,
    ) -> None:
        """Accept if any secret's HMAC of the non-empty raw body equals the header's digest."""
        found = _first_header(request, HMAC_HEADERS)
        if found is None:
            raise VerificationError("missing_signature", "the X-Shopify-Hmac-Sha256 header is missing")
        header, value = found
        try:
            candidate = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            candidate = b""
        if len(candidate) != hashlib.sha256().digest_size:
            raise VerificationError("bad_format", f"the {header} header is not a base64 SHA-256 digest")
        if not request.body:
            raise VerificationError("bad_format", "the body is empty; Shopify never signs an empty body")
        if not any(constant_time_equal(_digest(secret, request.body), candidate) for secret in secrets if secret):
            raise VerificationError(
                "no_matching_secret",
                f"the {header} signature does not match the app's client secret ({counted(len(secrets), 'secret')} tried); "
                "webhooks created in the store admin are signed with a different key",
            )

    def counts_replays_by_signed_content(self, options: Mapping[str, Any]) -> bool:
        return bool(options.get("merge_identical_bodies"))

    def signed_content_digest(self, request: InboundRequest, options: Mapping[str, Any]) -> str | None:
        """The body's digest, only where the tenant chose to merge identical bodies (see ``options``)."""
        if not self.counts_replays_by_signed_content(options):
            return None
        return hashlib.sha256(request.body).hexdigest()

    def describe(self, request: InboundRequest, options: Mapping[str, Any]) -> EventInfo:
        """Id and type come from headers only."""
        event_id = _first_header(request, EVENT_ID_HEADERS) or _first_header(request, WEBHOOK_ID_HEADERS)
        topic = _first_header(request, TOPIC_HEADERS)
        return EventInfo(event_id=event_id[1] if event_id else None, event_type=topic[1] if topic else "")

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
        """The HMAC and per-delivery X-Shopify-* headers; topic and event id only when given.

        Shop domain and API version are left to the fixture's recorded headers, which this must not overwrite.
        """
        triggered_at = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds")
        headers = {
            "X-Shopify-Hmac-Sha256": base64.b64encode(_digest(secret, body)).decode(),
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Triggered-At": triggered_at.replace("+00:00", "Z"),
        }
        if event_type:
            headers["X-Shopify-Topic"] = event_type
        if event_id:
            headers["X-Shopify-Event-Id"] = event_id
        return headers
