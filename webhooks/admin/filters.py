"""List filters for events, deliveries and attempts that stay cheap on tables with millions of rows."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, Subquery

from organizations.admin import DateRangeFilter
from webhooks.fields import secrets_deferred
from webhooks.models import Delivery, Destination, Source, WebhookEvent
from webhooks.models.delivery import RETRYING
from webhooks.providers.registry import provider_choices
from webhooks.selectors import EVENT_STATUS_HELD_BY_PLATFORM, held_by_platform_deliveries, uuid7_floor


class ProviderFilter(admin.SimpleListFilter):
    """Provider kind, from the registry (the one place providers are listed)."""

    title = "provider"
    parameter_name = "provider"
    field_path = "source__provider"

    def lookups(self, request, model_admin):
        return provider_choices()

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field_path: self.value()}) if self.value() else queryset


class SourceProviderFilter(ProviderFilter):
    field_path = "provider"


class SourceFilter(admin.SimpleListFilter):
    """A source; once an organization is chosen, only that organization's sources are offered."""

    title = "source"
    parameter_name = "source"
    field_path = "source_id"

    def lookups(self, request, model_admin):
        # Names only: a source whose secret no key decrypts is offered as any other.
        sources = secrets_deferred(Source.objects.select_related("organization").order_by("organization__name", "name"))
        organization = request.GET.get("organization", "")
        if organization.isascii() and organization.isdigit():
            sources = sources.filter(organization_id=int(organization))
        return [(source.pk, f"{source.organization.name} · {source}") for source in sources[:300]]

    def queryset(self, request, queryset):
        if self.value() and str(self.value()).isascii() and str(self.value()).isdigit():
            return queryset.filter(**{self.field_path: int(self.value())})
        return queryset


class DestinationFilter(admin.SimpleListFilter):
    title = "destination"
    parameter_name = "destination"
    field_path = "destination_id"

    def lookups(self, request, model_admin):
        destinations = secrets_deferred(
            Destination.objects.select_related("organization").order_by("organization__name", "name")
        )
        organization = request.GET.get("organization", "")
        if organization.isascii() and organization.isdigit():
            destinations = destinations.filter(organization_id=int(organization))
        return [(item.pk, f"{item.organization.name} · {item}") for item in destinations[:300]]

    def queryset(self, request, queryset):
        if self.value() and str(self.value()).isascii() and str(self.value()).isdigit():
            return queryset.filter(**{self.field_path: int(self.value())})
        return queryset


# Dead, or retrying as the dashboard, the API and list_events count it (models.delivery.RETRYING): not
# one the platform itself put back unsent after a failed attempt, which waits for the platform, not
# for its receiver (held_by_platform_deliveries, a choice of its own). Within models.delivery.FAILED, so on the
# partial index delivery_failed.
FAILED = Q(status=Delivery.Status.DEAD) | RETRYING


def failed_deliveries_of(event_ref) -> Exists:
    """Dead deliveries, or deliveries retrying after a failed attempt (not held by the platform)."""
    return Exists(Delivery.objects.filter(event=event_ref).filter(FAILED))


def deliveries_held_by_platform_of(event_ref) -> Exists:
    """Deliveries the platform itself put back unsent and holds (the dashboard's held_by_platform)."""
    return Exists(held_by_platform_deliveries(Delivery.objects.filter(event=event_ref)))


def failed_delivery_count_of(event_ref) -> Subquery:
    """How many of an event's deliveries failed (dead, or retrying after a failed attempt)."""
    failed = Delivery.objects.filter(event=event_ref).filter(FAILED).order_by().values("event")
    return Subquery(failed.annotate(count=Count("pk")).values("count"), output_field=IntegerField())


class ProcessingFilter(admin.SimpleListFilter):
    """Received events as the processing sees them: waiting their turn, or set aside after failing."""

    title = "processing"
    parameter_name = "processing"

    def lookups(self, request, model_admin):
        return (("waiting", "Waiting to be processed"), ("set_aside", "Set aside (could not be processed)"))

    def queryset(self, request, queryset):
        received = queryset.filter(status=WebhookEvent.Status.RECEIVED)
        if self.value() == "waiting":
            return received.filter(processing_retry_at__isnull=True)
        if self.value() == "set_aside":
            return received.filter(processing_retry_at__isnull=False)
        return queryset


class HasFailedDeliveriesFilter(admin.SimpleListFilter):
    title = "has failed deliveries"
    parameter_name = "failed"

    def lookups(self, request, model_admin):
        return (
            ("yes", "Yes (dead or retrying)"),
            (EVENT_STATUS_HELD_BY_PLATFORM, "Held by the platform"),
            ("no", "No"),
        )

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(failed_deliveries_of(OuterRef("pk")))
        if self.value() == EVENT_STATUS_HELD_BY_PLATFORM:
            return queryset.filter(deliveries_held_by_platform_of(OuterRef("pk")))
        if self.value() == "no":
            return queryset.exclude(failed_deliveries_of(OuterRef("pk")))
        return queryset


class StatusCodeFilter(admin.SimpleListFilter):
    """HTTP status class of the (last) answer."""

    title = "status code"
    parameter_name = "code"
    field_path = "last_status_code"

    def lookups(self, request, model_admin):
        return (("2xx", "2xx"), ("3xx", "3xx"), ("4xx", "4xx"), ("5xx", "5xx"), ("none", "No answer"))

    def queryset(self, request, queryset):
        value = self.value()
        if value == "none":
            return queryset.filter(**{f"{self.field_path}__isnull": True})
        if value in ("2xx", "3xx", "4xx", "5xx"):
            low = int(value[0]) * 100
            return queryset.filter(**{f"{self.field_path}__gte": low, f"{self.field_path}__lt": low + 100})
        return queryset


class ResponseStatusFilter(StatusCodeFilter):
    field_path = "response_status"


class ReceivedDateFilter(DateRangeFilter):
    """Received between two dates. The time-ordered id narrows the rows through the primary key first."""

    field_name = "received_at"
    title = "received"

    def queryset(self, request, queryset):
        start_at, end_at = self.bounds()
        # An id is minted when the request arrives, within moments of received_at: a minute's
        # margin keeps every match while the primary key index does the narrowing.
        if start_at and start_at.year > 1:  # year 1 bounds nothing (and has no minute before it)
            queryset = queryset.filter(id__gte=uuid7_floor(start_at - timedelta(minutes=1)))
        if end_at:
            queryset = queryset.filter(id__lt=uuid7_floor(end_at + timedelta(minutes=1)))
        return super().queryset(request, queryset)


class CompletedDateFilter(DateRangeFilter):
    """Completed (delivered, or gone dead) between two dates or times: with status dead, the
    deliveries that died then, as the admin index's "Dead, last 24 h" counts them."""

    field_name = "completed_at"
    title = "completed (delivered or dead)"
