"""Tenant-scoped reads: every query here takes the organization."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from organizations.models import Organization

from .models import Delivery, Destination, Source, WebhookEvent


def sources_for_organization(*, organization: Organization) -> QuerySet[Source]:
    return Source.objects.filter(organization=organization)


def destinations_for_organization(*, organization: Organization) -> QuerySet[Destination]:
    return Destination.objects.filter(organization=organization)


def events_for_organization(
    *,
    organization: Organization,
    status: str | None = None,
    source_id: int | None = None,
    before_id=None,
    limit: int = 50,
    with_deliveries: bool = False,
) -> list[WebhookEvent]:
    """Newest first; page with ``before_id`` (keyset on the time-ordered id, no OFFSET)."""
    events = WebhookEvent.objects.filter(organization=organization).defer("body")
    if status:
        events = events.filter(status=status)
    if source_id:
        events = events.filter(source_id=source_id)
    if before_id:
        events = events.filter(id__lt=before_id)
    if with_deliveries:
        events = events.prefetch_related(
            Prefetch(
                "deliveries",
                queryset=Delivery.objects.select_related("destination").order_by("id"),
            )
        )
    return list(events.order_by("-id")[:limit])


def event_for_organization(*, organization: Organization, event_id) -> WebhookEvent:
    """One event of this organization; raises WebhookEvent.DoesNotExist for anyone else's."""
    return WebhookEvent.objects.get(organization=organization, pk=event_id)
