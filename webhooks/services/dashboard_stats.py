"""Numbers for the overview page, computed in the database over bounded, indexed time windows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, F, OuterRef, Q, Subquery
from django.utils import timezone

from organizations.models import Organization
from webhooks.models import Delivery, DeliveryAttempt, Destination
from webhooks.models.delivery import FAILED as FAILED_DELIVERY
from webhooks.models.delivery import RETRYING as RETRYING_DELIVERY
from webhooks.models.delivery_attempt import FAILED as ATTEMPT_FAILED
from webhooks.selectors import uuid7_floor

from .delivery import DESTINATION_ENCRYPTED_FIELDS
from .event_hours import count_events, hour_of, hourly_counts

logger = logging.getLogger(__name__)


@dataclass
class Bar:
    start: datetime
    count: int
    # Geometry for the inline SVG chart, precomputed so the template only prints numbers.
    x: float = 0
    y: float = 0
    height: float = 0


@dataclass
class Chart:
    bars: list[Bar]
    total: int
    peak: int
    width: float
    height: float
    bar_width: float


@dataclass
class FailingDestination:
    destination: Destination
    dead: int
    retrying: int
    succeeded: int


@dataclass
class Overview:
    chart_24h: Chart
    chart_7d: Chart
    events_24h: int
    rejected_24h: int
    succeeded_24h: int
    dead_24h: int
    success_rate_24h: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    failing_destinations: list[FailingDestination]
    paused_destinations: list[Destination]
    computed_at: datetime | None = None
    # Start of the failing destinations' 7 days, to the second: their links open the events list
    # received from this very moment, so the list shows as many rows as the table counts.
    failing_since: datetime | None = None
    # Events received since ``retrying_since`` (24 hours before, to the second) whose delivery
    # failed and waits for a retry. Defaults: an overview cached before these fields existed still
    # renders (as none retrying) until it is refreshed.
    retrying_24h: int = 0
    retrying_since: datetime | None = None
    # Hookline's own test sends (the source page's sender, make run's demo webhook) accepted in the
    # last 24 hours: left out of events_24h, and said beside it, so that a delivered test does not
    # sit next to "0 events" unexplained.
    tests_24h: int = 0


CHART_HEIGHT = 120.0
CHART_WIDTH = 720.0


def _chart(counts: dict[datetime, int], start: datetime, hours: int) -> Chart:
    """One bar per hour from ``start``, hours without events included as empty bars."""
    slot = CHART_WIDTH / hours
    bar_width = max(slot - (1.0 if hours <= 48 else 0.3), 0.5)
    bars = [
        Bar(start=start + timedelta(hours=i), count=counts.get(start + timedelta(hours=i), 0)) for i in range(hours)
    ]
    peak = max((bar.count for bar in bars), default=0)
    for index, bar in enumerate(bars):
        bar.height = round(CHART_HEIGHT * bar.count / peak, 2) if peak else 0
        bar.x = round(index * slot, 2)
        bar.y = round(CHART_HEIGHT - bar.height, 2)
    return Chart(
        bars=bars,
        total=sum(bar.count for bar in bars),
        peak=peak,
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        bar_width=round(bar_width, 2),
    )


@dataclass
class EventCounts:
    hourly: dict[datetime, int]  # accepted events by hour of receipt
    accepted_24h: int
    rejected_24h: int
    tests_24h: int = 0  # accepted test sends, left out of accepted_24h


def _event_counts(organization: Organization, since: datetime, day_ago: datetime, now: datetime) -> EventCounts:
    """Events received since ``since`` (an hour's start) by hour, and in the last 24 h, without
    Hookline's test sends.

    The statistics are the provider's traffic, as the monthly usage is; test events stay in the
    events list. Closed hours come counted (event_hours: a week of a busy tenant's events was 1.1 s
    to read at each computation); the hour ``day_ago`` falls in is read from the events, from then.
    """
    hours = hourly_counts(organization.pk, since, now)
    first_whole_hour = hour_of(day_ago) + timedelta(hours=1)
    counts = EventCounts(hourly={hour: c.accepted for hour, c in hours.items()}, accepted_24h=0, rejected_24h=0)
    day = [c for hour, c in hours.items() if hour >= first_whole_hour]
    day += count_events(organization.pk, day_ago, first_whole_hour).values()
    for c in day:
        counts.accepted_24h += c.accepted
        counts.rejected_24h += c.rejected
        counts.tests_24h += c.tests
    return counts


def _latency_percentiles_sql(organization: Organization, since: datetime) -> tuple[str, list]:
    """The percentile query, reading in proportion to the window rather than to the tables.

    The window's succeeded deliveries are read from the index that holds them by destination
    (delivery_succeeded, one range per destination of the organization), each with the latency its
    success was recorded with (Delivery.latency), without the table. Only a delivery without one
    (it succeeded before the column existed, so within a day of the upgrade) has its event looked up
    by primary key: a scalar subquery, which COALESCE evaluates only then. Looking up every one
    (82,000 a day for a tenant of 2 million events a month) was 1.3 s.
    """
    return (
        "SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP ("
        " ORDER BY EXTRACT(EPOCH FROM COALESCE(d.latency, ("
        "  SELECT d.completed_at - e.received_at FROM webhooks_webhookevent e"
        "  WHERE e.id = d.event_id AND e.organization_id = d.organization_id LIMIT 1"
        " ))) * 1000)"
        " FROM webhooks_delivery d"
        " WHERE d.organization_id = %s"
        " AND d.destination_id = ANY(ARRAY(SELECT id FROM webhooks_destination WHERE organization_id = %s))"
        " AND d.status = %s AND d.id >= %s AND NOT d.is_replay",
        [organization.pk, organization.pk, Delivery.Status.SUCCEEDED, uuid7_floor(since)],
    )


def _latency_percentiles(organization: Organization, since: datetime) -> tuple[float | None, float | None]:
    """p50/p95 of receipt → successful delivery, in milliseconds, for deliveries of the window."""
    deliveries = Delivery.objects.filter(
        organization=organization, id__gte=uuid7_floor(since), status=Delivery.Status.SUCCEEDED, is_replay=False
    )
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            # The planner prices the event lookup as if made for every delivery, and past
            # jit_above_cost compiles the query: 0.4 – 1.2 s of a 1.5 s query, for a lookup made
            # for none of them once the day's deliveries have their latency.
            cursor.execute("SET LOCAL jit = off")
            cursor.execute(*_latency_percentiles_sql(organization, since))
            values = cursor.fetchone()[0]
        if not values or values[0] is None:
            return None, None
        return round(values[0]), round(values[1])
    # The embedded SQLite mode has no percentile function; its volumes are small.
    rows = deliveries.values_list("latency", "completed_at", "event__received_at")[:50_000]
    durations = sorted(
        (latency if latency is not None else completed - received).total_seconds() * 1000
        for latency, completed, received in rows
        if latency is not None or (completed and received)
    )
    if not durations:
        return None, None

    def pick(share: float) -> float:
        return round(durations[min(len(durations) - 1, int(share * len(durations)))])

    return pick(0.5), pick(0.95)


OVERVIEW_CACHE_SECONDS = 60


def cached_organization_overview(*, organization: Organization) -> Overview:
    """The overview, computed at most once a minute per organization.

    A week of hourly counts is an aggregate over every event of the week (a few
    hundred milliseconds at a million events a month); a minute-old summary is as
    useful, and the events list itself is always live.
    """
    key = f"dashboard:overview:{organization.pk}"
    try:
        overview = cache.get(key)
        if overview is None:
            overview = organization_overview(organization=organization)
            # An overview without events costs next to nothing to compute again, and a new
            # tenant's first event must show at once, not a minute later (test sends are not
            # counted, so an overview of tests alone is computed each time too, and shows their deliveries).
            if overview.events_24h:
                cache.set(key, overview, timeout=OVERVIEW_CACHE_SECONDS)
        return overview
    except Exception as exc:  # the cache is down: compute it every time rather than fail the page
        logger.warning("cache unavailable for the overview: %s", exc)
        return organization_overview(organization=organization)


def _ids_of_destinations_being_deleted(organization: Organization):
    """The ids of the organization's destinations being deleted (few, if any), as a subquery."""
    return Destination.objects.filter(organization=organization, deletion_requested_at__isnull=False).values("pk")


def organization_overview(*, organization: Organization, now: datetime | None = None) -> Overview:
    """Everything the overview page shows, for the last 24 hours (chart also for 7 days)."""
    now = now or timezone.now()
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    start_24h = this_hour - timedelta(hours=23)
    start_7d = this_hour - timedelta(hours=24 * 7 - 1)
    day_ago = now - timedelta(hours=24)
    events = _event_counts(organization, start_7d, day_ago, now)
    counts = events.hourly
    # One count per status, each a range of the (organization, status, -id) index read without the
    # table: one count of both read the day's every delivery row (80 ms against 30 ms for a tenant
    # of 80,000 deliveries a day).
    of_the_day = Delivery.objects.filter(organization=organization, id__gte=uuid7_floor(day_ago))
    deliveries = {
        "succeeded": of_the_day.filter(status=Delivery.Status.SUCCEEDED).count(),
        "dead": of_the_day.filter(status=Delivery.Status.DEAD).count(),
    }
    # Not finished, so not in the rate: but a rate of 100 % over two deliveries, with every other
    # one retrying behind a paused destination, must not read as all being well. Counted as the
    # events list its link opens shows them: events received since ``retrying_since``, each once.
    retrying_since = day_ago.replace(microsecond=0)
    retrying_floor = uuid7_floor(retrying_since)
    retrying_24h = (
        Delivery.objects.filter(
            RETRYING_DELIVERY, organization=organization, id__gte=retrying_floor, event_id__gte=retrying_floor
        )
        .values("event")
        .distinct()
        .count()
    )
    finished = deliveries["succeeded"] + deliveries["dead"]
    p50, p95 = _latency_percentiles(organization, day_ago)
    # Whole seconds: the links carry the start as the events list's "From" field reads it.
    week_ago = (now - timedelta(days=7)).replace(microsecond=0)
    week_floor = uuid7_floor(week_ago)
    # Counted as the events list its links open shows them: events received since ``week_ago``
    # (a replay of an older event is not one of them), each once however many of its deliveries
    # there failed. Such a delivery was made since too: the bound on its own id keeps the scan on
    # the index.
    of_the_week = (
        Delivery.objects.filter(organization=organization, id__gte=week_floor, event_id__gte=week_floor)
        # Not one being deleted: its page is gone, and the events list no longer filters by it.
        .exclude(destination_id__in=_ids_of_destinations_being_deleted(organization))
    )
    failing_rows = list(
        # From the failed deliveries alone (delivery_failed): counting distinct events over the
        # week's every delivery sorted them all, 570,000 rows and 0.8 s for a tenant of 80,000
        # deliveries a day (docs/dashboard-bench.md, twenty-first session).
        of_the_week.filter(FAILED_DELIVERY)
        # Not a destination whose only "failures" are deliveries the platform holds (RETRYING says
        # why): it would be listed as failing with nothing dead or retrying.
        .filter(Q(status=Delivery.Status.DEAD) | RETRYING_DELIVERY)
        .values("destination")
        .annotate(
            dead=Count("event", distinct=True, filter=Q(status=Delivery.Status.DEAD)),
            # Failing now but not yet out of retries: a destination answering 500 to everything
            # must show up here from its first failure, not only hours later when retries end.
            retrying=Count("event", distinct=True, filter=RETRYING_DELIVERY),
        )
        .order_by((F("dead") + F("retrying")).desc())[:5]
    )
    succeeded = dict(
        of_the_week.filter(
            destination_id__in=[row["destination"] for row in failing_rows], status=Delivery.Status.SUCCEEDED
        )
        .values("destination")
        .annotate(succeeded=Count("id"))
        .order_by()
        .values_list("destination", "succeeded")
    )
    for row in failing_rows:
        row["succeeded"] = succeeded.get(row["destination"], 0)
    # Cached as pickles: never load the (decrypted) secrets or custom headers into what is cached.
    destinations = Destination.objects.defer(*DESTINATION_ENCRYPTED_FIELDS).in_bulk(
        [row["destination"] for row in failing_rows]
    )
    return Overview(
        chart_24h=_chart(counts, start_24h, 24),
        chart_7d=_chart(counts, start_7d, 24 * 7),
        events_24h=events.accepted_24h,
        rejected_24h=events.rejected_24h,
        tests_24h=events.tests_24h,
        succeeded_24h=deliveries["succeeded"],
        dead_24h=deliveries["dead"],
        retrying_24h=retrying_24h,
        retrying_since=retrying_since,
        success_rate_24h=round(100 * deliveries["succeeded"] / finished, 1) if finished else None,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        failing_destinations=[
            FailingDestination(
                destination=destinations[row["destination"]],
                dead=row["dead"],
                retrying=row["retrying"],
                succeeded=row["succeeded"],
            )
            for row in failing_rows
        ],
        paused_destinations=list(
            Destination.objects.filter(
                organization=organization, paused_at__isnull=False, deletion_requested_at__isnull=True
            ).defer(*DESTINATION_ENCRYPTED_FIELDS)
        ),
        computed_at=now,
        failing_since=week_ago,
    )


@dataclass
class DestinationHealth:
    succeeded: int
    dead: int
    waiting: int
    retrying: int  # of the waiting ones, those whose last attempt failed
    # The events behind ``dead`` and ``retrying``, as the events list their links open shows them:
    # an event whose replay failed too is one event (and one row) but two deliveries.
    failed_events: int
    retrying_events: int
    success_rate: float | None
    last_failure_at: datetime | None
    last_failure_error: str
    # That failed attempt's delivery succeeded on a later one: without saying so, "Last failure:
    # HTTP 503" beside a 100% success rate read as a delivery lost.
    last_failure_delivered_later: bool = False

    @property
    def finished(self) -> int:
        """The deliveries the success rate is taken over: delivered or out of retries."""
        return self.succeeded + self.dead


def destination_health(*, destination: Destination, now: datetime | None = None) -> DestinationHealth:
    """Success rate over the last 7 days, what is waiting, and the last failed attempt."""
    return _destinations_health(destination.organization_id, [destination.pk], now)[destination.pk]


def destinations_health(
    *, organization: Organization, destinations: list[Destination], now: datetime | None = None
) -> dict[int, DestinationHealth]:
    """destination_health of each of the organization's ``destinations``, by id, in three queries
    however many there are (the destinations list used to make two per destination)."""
    return _destinations_health(organization.pk, [destination.pk for destination in destinations], now)


def _destinations_health(organization_id: int, ids: list[int], now: datetime | None) -> dict[int, DestinationHealth]:
    now = now or timezone.now()
    week_ago = uuid7_floor(now - timedelta(days=7))
    # "The last 7 days" as the events list's "Received: last 7 days" reads it, which the counts
    # link to: deliveries of events received since. Such a delivery was made since too, so the
    # bound on its own id (the index) stays, and takes along only replays of older events.
    of_the_week = Delivery.objects.filter(
        organization_id=organization_id, destination_id__in=ids, id__gte=week_ago, event_id__gte=week_ago
    )
    counted = (
        of_the_week.values("destination")
        .annotate(
            succeeded=Count("id", filter=Q(status=Delivery.Status.SUCCEEDED)),
            dead=Count("id", filter=Q(status=Delivery.Status.DEAD)),
            waiting=Count("id", filter=Q(status__in=[Delivery.Status.PENDING, Delivery.Status.IN_FLIGHT])),
            retrying=Count("id", filter=RETRYING_DELIVERY),
        )
        .order_by()
    )
    counts = {row["destination"]: {**row, "failed_events": 0, "retrying_events": 0} for row in counted}
    # The distinct events behind the failures, from the failed deliveries alone (delivery_failed):
    # a DISTINCT over the week's every delivery sorted them all, 570,000 rows and 1.3 s for a
    # tenant of 80,000 deliveries a day (docs/dashboard-bench.md, twenty-first session).
    failing = (
        of_the_week.filter(FAILED_DELIVERY)
        .values("destination")
        .annotate(
            failed_events=Count("event", distinct=True, filter=Q(status=Delivery.Status.DEAD)),
            retrying_events=Count("event", distinct=True, filter=RETRYING_DELIVERY),
        )
        .order_by()
    )
    for row in failing:
        if row["destination"] in counts:
            counts[row["destination"]].update(
                failed_events=row["failed_events"], retrying_events=row["retrying_events"]
            )
    # Each destination's newest failed attempt: one walk of the failed attempts per destination
    # (attempt_failed), made inside one query.
    newest_failures = {
        destination_id: attempt_id
        for destination_id, attempt_id in Destination.objects.filter(organization_id=organization_id, pk__in=ids)
        .annotate(
            last_failed_attempt=Subquery(
                DeliveryAttempt.objects.filter(organization_id=organization_id, delivery__destination=OuterRef("pk"))
                .filter(ATTEMPT_FAILED)
                .order_by("-id")
                .values("id")[:1]
            )
        )
        .order_by()
        .values_list("pk", "last_failed_attempt")
        if attempt_id is not None
    }
    failures = (
        {
            row["delivery__destination"]: row
            for row in DeliveryAttempt.objects.filter(organization_id=organization_id, pk__in=newest_failures.values())
            .order_by()
            .values(
                "started_at",
                "response_status",
                "error",
                "delivery__destination",
                "delivery__status",
                "delivery__last_error",
            )
        }
        if newest_failures
        else {}
    )
    return {destination_id: _health(counts.get(destination_id), failures.get(destination_id)) for destination_id in ids}


def _health(counts: dict | None, last_failure: dict | None) -> DestinationHealth:
    counts = counts or {
        "succeeded": 0,
        "dead": 0,
        "waiting": 0,
        "retrying": 0,
        "failed_events": 0,
        "retrying_events": 0,
    }
    finished = counts["succeeded"] + counts["dead"]
    error = ""
    if last_failure:
        # A dead delivery's own reason says why it stopped ("HTTP 301: redirects are not
        # followed; update the URL"); an HTTP failure's attempt has no error of its own.
        reason = (
            last_failure["delivery__last_error"] if last_failure["delivery__status"] == Delivery.Status.DEAD else ""
        )
        error = last_failure["error"] or reason or f"HTTP {last_failure['response_status']}"
    return DestinationHealth(
        succeeded=counts["succeeded"],
        dead=counts["dead"],
        waiting=counts["waiting"],
        retrying=counts["retrying"],
        failed_events=counts["failed_events"],
        retrying_events=counts["retrying_events"],
        success_rate=round(100 * counts["succeeded"] / finished, 1) if finished else None,
        last_failure_at=last_failure["started_at"] if last_failure else None,
        last_failure_error=error,
        last_failure_delivered_later=bool(last_failure)
        and last_failure["delivery__status"] == Delivery.Status.SUCCEEDED,
    )
