"""Shared set-up for the REST API tests: keys, events made directly, and requests with a key."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime

from django.utils import timezone
from uuid6 import uuid7

from organizations.api_keys import api_key_create
from organizations.models import ApiKey
from webhooks.models import Delivery, DeliveryAttempt, WebhookEvent
from webhooks.selectors import uuid7_floor


def make_key(organization, access=ApiKey.Access.READ_WRITE, name="script") -> tuple[ApiKey, str]:
    return api_key_create(organization=organization, name=name, access=access)


def make_event(
    source,
    *,
    body: bytes = b'{"id": "evt_1", "type": "invoice.paid"}',
    headers: dict | None = None,
    provider_event_id: str | None = None,
    event_type: str = "invoice.paid",
    status: str = WebhookEvent.Status.PROCESSED,
    received_at: datetime | None = None,
) -> WebhookEvent:
    """An event as ingest stores it, with an id of the moment it claims to be received."""
    event_id = uuid7() if received_at is None else uuid.UUID(int=uuid7_floor(received_at).int | secrets.randbits(62))
    return WebhookEvent.objects.create(
        id=event_id,
        organization_id=source.organization_id,
        source=source,
        body=body,
        headers=headers or {"content-type": "application/json"},
        provider_event_id=provider_event_id,
        event_type=event_type,
        status=status,
        received_at=received_at or timezone.now(),
    )


def make_delivery(event, destination, *, status=Delivery.Status.DEAD, attempts: int = 1) -> Delivery:
    delivery = Delivery.objects.create(
        organization_id=event.organization_id,
        event=event,
        destination=destination,
        status=status,
        attempt_count=attempts,
        last_status_code=503 if attempts else None,
        completed_at=timezone.now() if status in (Delivery.Status.DEAD, Delivery.Status.SUCCEEDED) else None,
    )
    for number in range(1, attempts + 1):
        DeliveryAttempt.objects.create(
            organization_id=event.organization_id,
            delivery=delivery,
            attempt_number=number,
            duration_ms=42,
            request_headers={"webhook-id": str(event.pk), "webhook-signature": "v1,c2lnbmVk"},
            response_status=503,
            response_body="upstream unavailable",
        )
    return delivery


def api_get(client, key: str, path: str, **params):
    return client.get(path, params, HTTP_AUTHORIZATION=f"Bearer {key}")


def api_post(client, key: str, path: str, data: dict | None = None):
    return client.post(path, data or {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")


def api_patch(client, key: str, path: str, data: dict | None = None):
    return client.patch(path, data or {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}")


def api_delete(client, key: str, path: str):
    return client.delete(path, HTTP_AUTHORIZATION=f"Bearer {key}")
