"""Shared set-up for the dashboard tests: a tenant with a source, a destination, events and deliveries."""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.utils import timezone

from webhooks.models import Delivery, DeliveryAttempt, Destination, Source, WebhookEvent

from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import stripe_headers


@dataclass
class World:
    source: Source
    destination: Destination
    event: WebhookEvent
    delivery: Delivery


def ingest_stripe(client, source, event_id: str, event_type: str = "invoice.paid", note=None, **headers) -> str:
    """Post a correctly signed Stripe webhook through the real ingest endpoint; returns our event id.
    ``note``: a field of the body; ``headers``: more request headers (the client's HTTP_* form)."""
    payload = {"id": event_id, "object": "event", "type": event_type}
    if note is not None:
        payload["note"] = note
    body = json.dumps(payload)
    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **stripe_headers(body, STRIPE_SECRET),
        **headers,
    )
    assert response.status_code == 200, response.content
    return response.json()["id"]


def dead_delivery(event: WebhookEvent, destination: Destination) -> Delivery:
    """A delivery that ran out of retries after one 503, as the engine leaves it (its event processed)."""
    WebhookEvent.objects.filter(pk=event.pk, status=WebhookEvent.Status.RECEIVED).update(
        status=WebhookEvent.Status.PROCESSED, processed_at=timezone.now()
    )
    event.refresh_from_db(fields=["status", "processed_at"])
    delivery = Delivery.objects.create(
        organization_id=event.organization_id,
        event=event,
        destination=destination,
        status=Delivery.Status.DEAD,
        attempt_count=1,
        last_status_code=503,
        completed_at=timezone.now(),
    )
    DeliveryAttempt.objects.create(
        organization_id=event.organization_id,
        delivery=delivery,
        attempt_number=1,
        duration_ms=42,
        response_status=503,
        response_body="upstream unavailable",
    )
    return delivery


def build_world(client, organization, url="http://127.0.0.1:9/hook") -> World:
    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, url, sources=[source])
    event = WebhookEvent.objects.get(pk=ingest_stripe(client, source, "evt_world_1"))
    return World(source=source, destination=destination, event=event, delivery=dead_delivery(event, destination))


def work_driven_by_the_test(monkeypatch, *, bulk_retries: bool = False) -> None:
    """No Celery worker serves the live server of a browser test: nothing is published, and the test
    processes events, sends deliveries (and, with ``bulk_retries``, runs bulk retries) itself."""
    from webhooks.services import delivery as delivery_service
    from webhooks.services import operations, processing

    for module in (processing, delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr("webhooks.services.ingest.schedule_event_processing", lambda **_: None)
    if bulk_retries:
        monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
        monkeypatch.setattr(processing, "schedule_event_processing", lambda **_: None)
