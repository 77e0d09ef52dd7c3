"""What a pending delivery waits for: one rule for every surface that shows one (the admin's event
and delivery pages and its retry messages, retry_delivery, show_event, the API and the dashboard's
"next try"), as the dispatcher decides (delivery._lock_destinations). A module of its own, light to
import: show_event and the pages need it, not the delivery engine."""

from __future__ import annotations

from django.db.models import Count
from django.utils import timezone

from organizations.models import Organization
from webhooks.models import Delivery, Destination

# What delivery_waits reads of each delivery's destination: a list that loads destinations with only()
# takes these too, or each row would load the rest on its own.
DESTINATION_FIELDS_READ = (
    "is_active",
    "deletion_requested_at",
    "paused_at",
    "max_concurrency",
    "rate_limit_per_second",
    "rate_window_started_at",
    "rate_window_count",
)

# Why a destination is sent nothing for now while its deliveries wait, as the dispatcher decides
# (_lock_destinations, dead_letter_deliveries_of_inactive_destinations): a code for scripts, and
# the sentence that says it.
DELIVERY_HOLDS = {
    # Said before inactive, which it is too: its waiting deliveries are not marked dead, and it is never
    # active again: they are deleted with it (destination_deletion).
    "destination_being_deleted": "Its destination is being deleted: nothing more is sent to it",
    "destination_inactive": (
        "Its destination is inactive: it is sent nothing, and is soon marked dead (retry it once the "
        "destination is active again)"
    ),
    "organization_being_deleted": "Its organization is being deleted: nothing more is sent",
    "destination_paused": (
        "Its destination is paused: it is sent once the destination is resumed (if held too long, it is "
        "marked dead: the destination's page says from when)"
    ),
    "organization_suspended": (
        "Its organization is suspended: it is sent once the organization is active again (if held too long, "
        "it is marked dead: the organization page in the admin says from when)"
    ),
}
# What a pending delivery of a destination that is sent to waits for: the next attempt's time, or,
# once due, its destination's limits as the dispatcher applies them.
DELIVERY_WAITS = {
    **DELIVERY_HOLDS,
    "next_attempt_time": "It is sent at its next attempt time",
    "destination_concurrency": (
        "Its destination has as many attempts in flight as its max_concurrency allows: it is sent once one ends"
    ),
    "organization_concurrency": (
        "Its organization has as many attempts in flight as it may have at once (its own limit, or the "
        "platform's): it is sent once one ends"
    ),
    "destination_rate_limit": "Its destination's rate limit is used up for this second: it is sent in a later one",
    **{
        # Put back unsent by the platform (Delivery.put_back_cause): its next attempt time is the
        # platform's, not a backoff after its receiver failed.
        "platform_secret_unreadable": (
            "The platform holds it, not its receiver: the workers cannot decrypt its destination's signing "
            "secret or custom headers now (a key being deployed, or missing). Nothing was sent and no attempt "
            "is counted; it is tried again every minute until they can"
        ),
        "platform_dns_lookups_busy": (
            "The platform holds it, not its receiver: the platform's own bound on DNS lookups in progress "
            "(taken by lookups that other destinations' DNS leaves unanswered) refused its send. Nothing was "
            "sent and no attempt is counted; it is tried again within a minute"
        ),
    },
}
# The waiting code of a delivery put back unsent, by its put_back_cause (services.delivery.PUT_BACK_CAUSES).
PUT_BACK_WAITS = {
    Delivery.PutBackCause.SECRET_UNREADABLE: "platform_secret_unreadable",
    Delivery.PutBackCause.DNS_LOOKUPS_BUSY: "platform_dns_lookups_busy",
}
# Why the platform holds deliveries it put back unsent, for a count of them (the destination's page):
# DELIVERY_WAITS' words for several, after "held by the platform, not by your endpoint: ".
HELD_BY_PLATFORM_WHY = {
    "platform_secret_unreadable": (
        "the platform's workers cannot decrypt this destination's signing secret or custom headers now (a key being "
        "deployed, or missing); they are tried again every minute until they can"
    ),
    "platform_dns_lookups_busy": (
        "the platform's own bound on DNS lookups in progress refused their send; they are tried again within a minute"
    ),
}
# The hold as the end of "next try …", where the time alone would be untrue (a paused
# destination's delivery was due minutes ago and is not sent).
NEXT_TRY_WHEN_HELD = {
    "destination_being_deleted": "none: the destination is being deleted",
    "destination_inactive": "none while the destination is inactive",
    "organization_being_deleted": "none: the organization is being deleted",
    "destination_paused": "when the destination is resumed",
    "organization_suspended": "when the organization is active again",
    # Not a hold of the destination's (its time is the next try), but the time alone reads as a
    # backoff after the receiver failed.
    "platform_secret_unreadable": "once the platform can decrypt the destination's secret, not the receiver's failure",
    "platform_dns_lookups_busy": "within a minute, once the platform's own DNS lookups free up, not the receiver's failure",
}


def next_try_when(delivery: Delivery, wait: str | None) -> str:
    """The end of a pending delivery's "next try …" in words, or "" where its time alone says it.
    ``wait`` is its delivery_waits() code. One the platform put back unsent says so even once its
    time has come: it is tried when a worker takes it and put back again while the cause lasts, and
    "next try 5 min ago" alone read as a backoff after its receiver failed."""
    if wait in NEXT_TRY_WHEN_HELD:
        return NEXT_TRY_WHEN_HELD[wait]
    return NEXT_TRY_WHEN_HELD.get(PUT_BACK_WAITS.get(delivery.put_back_cause), "")


def delivery_hold(*, destination: Destination, organization: Organization | None = None) -> str | None:
    """The DELIVERY_HOLDS code of what a delivery of this destination waits for whatever its time, or
    None when the destination is sent to. A retry says so: "queued" alone reads as "on its way"; and
    so do the pages, the API and show_event of a pending delivery (delivery_waits)."""
    organization = organization or destination.organization
    if destination.being_deleted:
        return "destination_being_deleted"
    if not destination.is_active:
        return "destination_inactive"
    if organization.being_deleted:
        return "organization_being_deleted"
    if destination.paused_at is not None:
        return "destination_paused"
    if not organization.is_active:
        return "organization_suspended"
    return None


def delivery_waits(deliveries, *, now=None) -> dict:
    """What each pending delivery of ``deliveries`` (loaded with their destination) waits for: a
    DELIVERY_WAITS code by delivery id, None for one that is due and goes out as soon as a sending
    thread takes it (and for one that is not pending). The same rule on every surface: the admin's
    event and delivery pages, show_event, the API and the dashboard's "next try".

    At most three queries whatever the number of deliveries: their organizations' states, and the
    attempts in flight of the destinations and of the organizations whose due deliveries are not held."""
    deliveries = [delivery for delivery in deliveries if delivery.status == Delivery.Status.PENDING]
    if not deliveries:
        return {}
    now = now or timezone.now()
    organizations = Organization.objects.only("pk", "is_active", "deletion_requested_at", "max_concurrency").in_bulk(
        {delivery.organization_id for delivery in deliveries}
    )
    waits, due = {}, []
    for delivery in deliveries:
        destination = delivery.destination
        hold = delivery_hold(destination=destination, organization=organizations[delivery.organization_id])
        if hold:
            waits[delivery.pk] = hold
        elif delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
            # Put back unsent by the platform: the same wait, for a reason that is not the receiver's.
            waits[delivery.pk] = PUT_BACK_WAITS.get(delivery.put_back_cause, "next_attempt_time")
        else:
            due.append(delivery)
    in_flight, organization_in_flight = {}, {}
    if due:
        in_flight = _in_flight_by("destination_id", {delivery.destination_id for delivery in due})
        # The organization's max_concurrency (or ORGANIZATION_MAX_CONCURRENCY): the dispatcher passes
        # over an organization at it (_OrganizationRoom).
        organization_in_flight = _in_flight_by("organization_id", {delivery.organization_id for delivery in due})
    window = now.replace(microsecond=0)  # the dispatcher's rate window (claim_due_deliveries)
    for delivery in due:
        destination = delivery.destination
        if in_flight.get(destination.pk, 0) >= destination.max_concurrency:
            waits[delivery.pk] = "destination_concurrency"
        elif (
            organization_in_flight.get(delivery.organization_id, 0)
            >= organizations[delivery.organization_id].effective_max_concurrency
        ):
            waits[delivery.pk] = "organization_concurrency"
        elif (
            destination.rate_limit_per_second
            and destination.rate_window_started_at == window
            and destination.rate_window_count >= destination.rate_limit_per_second
        ):
            waits[delivery.pk] = "destination_rate_limit"
        else:
            waits[delivery.pk] = None
    return waits


def _in_flight_by(field: str, ids: set[int]) -> dict[int, int]:
    """Attempts in flight by ``field`` (destination_id or organization_id), for those ``ids``."""
    return dict(
        Delivery.objects.filter(**{f"{field}__in": ids}, status=Delivery.Status.IN_FLIGHT)
        .values_list(field)
        .annotate(count=Count("id"))
        .order_by()
    )
