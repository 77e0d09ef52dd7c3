"""An event's story for operators: where it came from and what became of each delivery."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from organizations.models import Organization
from webhooks.models import Delivery, DeliveryAttempt, Source, WebhookEvent
from webhooks.selectors import event_detail_for_organization, events_found_by_id

from .delivery_waits import delivery_waits
from .payload_filters import destinations_not_taking
from .text import readable_body

# Several events can carry one provider id (two sources, a forged request claiming it, other
# organizations): the newest this many are told, and the output says when there were more.
STORIES_SHOWN = 10
RESPONSE_EXCERPT_CHARS = 200


@dataclass
class EventStories:
    stories: list[dict]  # newest first
    truncated: bool  # more events matched than are told


def event_stories(
    *,
    text: str,
    organization: Organization | None = None,
    source: Source | None = None,
    with_body: bool = False,
    limit: int | None = None,
) -> EventStories:
    """The stories of the events an id names: Hookline's event id, a delivery's id (the webhook-id a
    destination received) or the provider's event id, in ``organization`` (None: in every one, the
    operators' search). LookupError if none. Never a secret, nor the body unless ``with_body``."""
    text, limit = text.strip(), limit or STORIES_SHOWN
    if not text:
        raise LookupError("give an event id, a delivery id or a provider event id")
    found = events_found_by_id(text=text, organization=organization, source=source, limit=limit + 1)
    if not found:
        where = f" of source {source.pk}" if source else f" in organization {organization.slug}" if organization else ""
        raise LookupError(f'no event{where} has the id "{text}"')
    stories = [
        event_story(
            event_detail_for_organization(organization=match.organization, event_id=match.pk),
            organization=match.organization,
            with_body=with_body,
        )
        for match in found[:limit]
    ]
    return EventStories(stories=stories, truncated=len(found) > limit)


def event_story(event: WebhookEvent, *, organization: Organization, with_body: bool = False) -> dict:
    """One event (loaded by event_detail_for_organization) as plain data: no headers (signatures),
    no secret, the body's size and, only ``with_body``, the body."""
    body = bytes(event.body)
    not_taking = destinations_not_taking(event)
    deliveries = list(event.deliveries.all())
    waits = delivery_waits(deliveries)
    story = {
        "id": str(event.id),
        "organization": {"slug": organization.slug, "name": organization.name},
        "source": {"id": event.source.pk, "name": event.source.name, "provider": event.source.provider},
        "provider_event_id": event.provider_event_id,
        "event_type": event.event_type,
        "status": event.status,
        "received_at": _iso(event.received_at),
        "processed_at": _iso(event.processed_at),
        "duplicate_count": event.duplicate_count,
        "last_duplicate_at": _iso(event.last_duplicate_at),
        "rejection": None,
        "processing_failure": None,
        "body_size": len(body),
        "deliveries": [_delivery_story(delivery, waits.get(delivery.pk)) for delivery in deliveries],
        # As on the dashboard's event page: "0 deliveries" alone does not say that a destination's
        # filters (as they are now) left the event out: its payload filters or its event types.
        "left_out_by_payload_filters": [
            {"destination": {"id": refusal["destination_id"], "name": refusal["name"]}, "reason": refusal["reason"]}
            for refusal in not_taking
            if refusal["filter"] == "payload_filters"
        ],
        "left_out_by_event_types": [
            {
                "destination": {"id": refusal["destination_id"], "name": refusal["name"]},
                "event_types": refusal["event_types"],
                "reason": refusal["reason"],
            }
            for refusal in not_taking
            if refusal["filter"] == "event_types"
        ],
    }
    if event.status == WebhookEvent.Status.REJECTED:
        story["rejection"] = {
            "code": event.rejection_code,
            "detail": event.rejection_detail,
            "claimed_event_id": event.claimed_event_id,
        }
    if event.is_set_aside:
        story["processing_failure"] = {
            "error": event.processing_error,
            "tries": event.processing_failures,
            "next_try_at": _iso(event.processing_retry_at),
        }
    if with_body:
        story["body"] = readable_body(body).raw
    return story


def _delivery_story(delivery: Delivery, waiting_for: str | None) -> dict:
    destination = delivery.destination
    return {
        "id": str(delivery.pk),
        "webhook_id": delivery.message_id,
        "is_replay": delivery.is_replay,
        "destination": {
            "id": destination.pk,
            "name": destination.name,
            # The host only: many receivers take the URL's path as their credential (url_for_viewer).
            "host": urlsplit(destination.url).netloc.rpartition("@")[2],
            "paused": destination.paused_at is not None,
            "active": destination.is_active,
            # Inactive too, but never active again: its deliveries are deleted with it.
            "being_deleted": destination.being_deleted,
        },
        "status": delivery.status,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": _iso(delivery.next_attempt_at) if delivery.status == Delivery.Status.PENDING else None,
        # A pending delivery's reason to wait (delivery_waits.DELIVERY_WAITS), as the admin and the
        # API say it; None when it is due and goes out as soon as a sending thread takes it.
        "waiting_for": waiting_for,
        "completed_at": _iso(delivery.completed_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "attempts": [_attempt_story(attempt) for attempt in delivery.attempts.all()],
    }


def _attempt_story(attempt: DeliveryAttempt) -> dict:
    # Never the request headers: they hold the signatures made with the destination's secret.
    excerpt = attempt.response_body
    if len(excerpt) > RESPONSE_EXCERPT_CHARS:
        excerpt = excerpt[:RESPONSE_EXCERPT_CHARS] + "…"
    return {
        "attempt_number": attempt.attempt_number,
        "started_at": _iso(attempt.started_at),
        "response_status": attempt.response_status,
        "duration_ms": attempt.duration_ms,
        "error": attempt.error,
        "response_excerpt": excerpt,
        # As the API's attempts: the receiver's answer was longer than DELIVERY_RESPONSE_BODY_MAX_BYTES,
        # and what is kept (and the excerpt) is its start.
        "response_truncated": attempt.response_truncated,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


UNRECORDED_ATTEMPT = (
    "not recorded: its worker stopped mid-attempt; the receiver may have got it (sent again with the same webhook-id)"
)


def unrecorded_attempt_numbers(*, attempt_count: int, status: str, recorded: set[int]) -> list[int]:
    """The attempts a delivery counts that are not on record: claimed and never answered, their
    worker killed mid-send (the sweeper released them) or their result given up. A claim is
    counted as an attempt when taken (one never sent is uncounted again), so a number missing
    below the count is such a send; the one in flight now is just not answered yet."""
    being_sent = attempt_count if status == Delivery.Status.IN_FLIGHT else None
    return [number for number in range(1, attempt_count + 1) if number not in recorded and number != being_sent]
