"""Sending one delivery attempt, and deciding what happens next."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import random
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from organizations.services import audit_record
from webhooks.models import Delivery, DeliveryAttempt

from . import outbound

logger = logging.getLogger(__name__)

# Never forwarded: they describe the hop from the provider to us, not the event.
HOP_BY_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
    "authorization",
    "cookie",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "x-request-id",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
}


def sign_standard_webhook(*, secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks v1 signature of ``body`` (secret in whsec_<base64> form)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def retry_delay_seconds(attempt_count: int) -> float | None:
    """Delay before the next try after ``attempt_count`` failed tries; None when they are used up."""
    schedule = settings.DELIVERY_RETRY_SCHEDULE
    if attempt_count > len(schedule):
        return None
    base = schedule[attempt_count - 1]
    # Jitter spreads retries of a destination that failed for many events at once.
    return base * random.uniform(0.9, 1.1)


def claim_delivery(delivery_id) -> Delivery | None:
    """Take a due delivery for this worker, or None if it is not due or another worker has it."""
    now = timezone.now()
    claimed = Delivery.objects.filter(pk=delivery_id, status=Delivery.Status.PENDING, next_attempt_at__lte=now).update(
        status=Delivery.Status.IN_FLIGHT, claimed_at=now, attempt_count=F("attempt_count") + 1
    )
    if claimed != 1:
        return None
    return Delivery.objects.select_related("event", "destination").get(pk=delivery_id)


def build_request_headers(delivery: Delivery, timestamp: int) -> dict[str, str]:
    event = delivery.event
    headers = {name: value for name, value in event.headers.items() if name.lower() not in HOP_BY_HOP_HEADERS}
    message_id = str(event.id)
    headers.update(
        {
            "User-Agent": "Hookline-Webhooks/1.0",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard_webhook(
                secret=delivery.destination.secret,
                message_id=message_id,
                timestamp=timestamp,
                body=bytes(event.body),
            ),
        }
    )
    headers.setdefault("Content-Type", "application/json")
    return headers


def deliver(delivery_id) -> Delivery | None:
    """Make one attempt of a due delivery. Safe to call twice: only one caller wins the claim."""
    delivery = claim_delivery(delivery_id)
    if delivery is None:
        return None
    destination = delivery.destination
    if not destination.is_active:
        return _finish(delivery, None, error="the destination is disabled", retry=False)

    timestamp = int(time.time())
    headers = build_request_headers(delivery, timestamp)
    started_at = timezone.now()
    # No transaction is open here: the HTTP call must never hold database locks.
    response = outbound.post(
        destination.url, body=bytes(delivery.event.body), headers=headers, timeout=destination.timeout_seconds
    )
    safe_headers = {name: value for name, value in headers.items() if name.lower() != "webhook-signature"}
    DeliveryAttempt.objects.create(
        organization_id=delivery.organization_id,
        delivery=delivery,
        attempt_number=delivery.attempt_count,
        started_at=started_at,
        duration_ms=response.duration_ms,
        request_headers=safe_headers,
        response_status=response.status,
        response_body=response.body,
        error=response.error[:500],
    )
    succeeded = response.status is not None and 200 <= response.status < 300
    return _finish(delivery, response.status, error=response.error, retry=not succeeded)


def _finish(delivery: Delivery, status_code: int | None, *, error: str, retry: bool) -> Delivery:
    now = timezone.now()
    fields = {"last_status_code": status_code, "last_error": error[:500], "claimed_at": None}
    if status_code is not None and 200 <= status_code < 300:
        fields.update(status=Delivery.Status.SUCCEEDED, completed_at=now, next_attempt_at=None)
    else:
        delay = retry_delay_seconds(delivery.attempt_count) if retry else None
        if delay is None:
            fields.update(status=Delivery.Status.DEAD, completed_at=now, next_attempt_at=None)
        else:
            fields.update(
                status=Delivery.Status.PENDING, next_attempt_at=now + timedelta(seconds=delay), enqueued_at=None
            )
    # Only our claim may be finished: if the sweeper released it meanwhile, leave it be.
    Delivery.objects.filter(pk=delivery.pk, status=Delivery.Status.IN_FLIGHT).update(**fields)
    for name, value in fields.items():
        setattr(delivery, name, value)
    return delivery


class DeliveryRetryError(ValueError):
    """The delivery cannot be retried by hand (message is safe to show)."""


@transaction.atomic
def delivery_retry(*, delivery: Delivery, actor=None) -> Delivery:
    """Send a dead or failing delivery again now (a manual retry)."""
    locked = Delivery.objects.select_for_update().get(pk=delivery.pk)
    if locked.status in (Delivery.Status.SUCCEEDED, Delivery.Status.IN_FLIGHT):
        raise DeliveryRetryError(f"the delivery is {locked.get_status_display().lower()}; nothing to retry")
    previous = locked.status
    now = timezone.now()
    Delivery.objects.filter(pk=locked.pk).update(
        status=Delivery.Status.PENDING, next_attempt_at=now, enqueued_at=now, completed_at=None
    )
    audit_record(
        action="delivery.retried",
        organization=locked.organization,
        actor=actor,
        target=locked,
        changes={"status": [previous, Delivery.Status.PENDING]},
    )
    from .processing import enqueue_deliveries

    transaction.on_commit(lambda: enqueue_deliveries([locked.pk]))
    locked.refresh_from_db()
    return locked
