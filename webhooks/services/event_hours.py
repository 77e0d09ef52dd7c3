"""An organization's events counted per UTC hour, for the overview: closed hours once, kept in EventHour.

An hour is closed once no event can still be stored in it: an event's received_at is set when its
request arrives and never changes, and a row is committed within the ingest's commit timeout
(INGEST_COMMIT_TIMEOUT_SECONDS, 10 s) or a little after it; CLOSED_AFTER leaves ample room for that
and for clocks of the web hosts. Nor does an event move between accepted and rejected. What can
change a closed hour is a deletion (retention, a source's or the organization's deletion): each one
calls ``forget_event_hours`` in the transaction that deletes the events, and the hours it deleted
from are counted again, from what is left, when the overview next asks for them.

Counting and forgetting exclude each other per organization (an advisory lock, shared by those who
count, taken alone by a deletion): without it a count read before a deletion committed could be
stored after that deletion forgot the hour, and stay wrong. Counts of the same hour made at the same
time are equal, and the first one stored wins (ON CONFLICT DO NOTHING).

Nothing of this is on the ingest path: the hours are counted by whoever reads them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncHour

from organizations.models import Organization
from webhooks.models import EventHour, WebhookEvent
from webhooks.selectors import uuid7_floor

from .row_locks import check_foreign_keys
from .sender_marks import TEST_MARK_HEADER, hookline_test_events

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
# How long after its end an hour is taken for closed (see the module's docstring).
CLOSED_AFTER = timedelta(minutes=15)
# An event's id and received_at are taken moments apart: an hour's events are looked for by id this
# much either side of it (the (organization, -id) index), then kept by received_at.
ID_TIME_SLACK = timedelta(minutes=5)
# EventHour rows older than this are never read (the overview's chart is 7 days): the retention run
# deletes them.
KEPT = timedelta(days=8)
# The advisory locks' first key (the second is the organization's id); the two-key form never
# meets run_locks' one-key locks.
_LOCK_NAMESPACE = 730_011


@dataclass
class HourCounts:
    accepted: int = 0  # accepted events, Hookline's test sends left out
    rejected: int = 0  # rejected requests, test sends left out
    tests: int = 0  # accepted test sends


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def closed_before(now: datetime) -> datetime:
    """The start of the first hour that is not closed at ``now``: hours starting before it are."""
    return hour_of(now - CLOSED_AFTER)


def count_events(organization_id: int, start: datetime, end: datetime | None = None) -> dict[datetime, HourCounts]:
    """The organization's events received from ``start`` to ``end`` (open-ended when None), per UTC
    hour, read from the events themselves. Hours without events are left out."""
    rejected = Q(status=WebhookEvent.Status.REJECTED)
    events = WebhookEvent.objects.filter(
        organization_id=organization_id, id__gte=uuid7_floor(start - ID_TIME_SLACK), received_at__gte=start
    )
    if end is not None:
        events = events.filter(id__lt=uuid7_floor(end + ID_TIME_SLACK), received_at__lt=end)
    rows = (
        events.annotate(hour=TruncHour("received_at", tzinfo=UTC))
        .values("hour")
        .annotate(
            accepted=Count("id", filter=~rejected),
            rejected=Count("id", filter=rejected),
            # The rows are read for their status anyway; the marks are looked at in the same scan,
            # and a marked event's body only in the few hours that hold one, to check the mark.
            marked=Count("id", filter=Q(headers__has_key=TEST_MARK_HEADER)),
        )
        .order_by()
    )
    counts, marked_hours = {}, []
    for row in rows:
        hour = row["hour"].astimezone(UTC)
        counts[hour] = HourCounts(accepted=row["accepted"], rejected=row["rejected"])
        if row["marked"]:
            marked_hours.append(hour)
    if marked_hours:
        in_marked_hours = Q()
        for hour in marked_hours:
            in_marked_hours |= Q(received_at__gte=hour, received_at__lt=hour + HOUR)
        for test in hookline_test_events(events.filter(in_marked_hours).order_by(), "status"):
            hour = hour_of(test["received_at"])
            if test["status"] == WebhookEvent.Status.REJECTED:
                counts[hour].rejected -= 1
            else:
                counts[hour].accepted -= 1
                counts[hour].tests += 1
    return counts


def hourly_counts(organization_id: int, since: datetime, now: datetime) -> dict[datetime, HourCounts]:
    """The organization's events per UTC hour from ``since`` (an hour's start) on, every hour up to
    ``now``'s included (and any later one a host's clock put events in): the closed hours from
    EventHour, counted first where missing, the others from the events."""
    open_from = max(closed_before(now), since)
    stored = {
        row.hour.astimezone(UTC): HourCounts(accepted=row.accepted, rejected=row.rejected, tests=row.tests)
        for row in EventHour.objects.filter(organization_id=organization_id, hour__gte=since, hour__lt=open_from)
    }
    missing, hour = [], since
    while hour < open_from:
        if hour not in stored:
            missing.append(hour)
        hour += HOUR
    counts = {hour: HourCounts() for hour in _hours(since, open_from)} | stored
    if missing:
        counts |= _count_and_store(organization_id, missing)
    return counts | count_events(organization_id, open_from)


def _hours(start: datetime, end: datetime) -> list[datetime]:
    return [start + HOUR * n for n in range(int((end - start) / HOUR))]


def _count_and_store(organization_id: int, hours: list[datetime]) -> dict[datetime, HourCounts]:
    """Count the closed ``hours`` (ascending) from the events and store them, hours without events too."""
    runs: list[list[datetime]] = []  # consecutive hours are counted in one query
    for hour in hours:
        if runs and runs[-1][-1] + HOUR == hour:
            runs[-1].append(hour)
        else:
            runs.append([hour])
    counts: dict[datetime, HourCounts] = {}
    with transaction.atomic():
        # Before the counts are read: the statement that reads them then sees every deletion
        # committed before it, and no deletion can commit until these rows are stored.
        _lock(organization_id, shared=True)
        for run in runs:
            found = count_events(organization_id, run[0], run[-1] + HOUR)
            counts |= {hour: found.get(hour, HourCounts()) for hour in run}
        rows = [
            EventHour(
                organization_id=organization_id, hour=hour, accepted=c.accepted, rejected=c.rejected, tests=c.tests
            )
            for hour, c in counts.items()
        ]
        try:
            with transaction.atomic():
                EventHour.objects.bulk_create(rows, ignore_conflicts=True)
                # The organization's foreign key is checked here, not at the commit (deferred), past
                # this except: an organization deleted meanwhile made the overview a 500.
                check_foreign_keys((Organization,))
        except DatabaseError as exc:
            # The counts are right all the same (the organization being deleted, say): they are
            # shown, and counted again next time.
            logger.warning("the overview's hours of organization %s were not stored: %s", organization_id, exc)
    return counts


def forget_event_hours(events: QuerySet) -> None:
    """Before ``events`` (a WebhookEvent query, a batch about to be deleted) are deleted, in the same
    transaction: forget the stored counts of every hour they were received in, so that those are
    counted again from the events left."""
    assert connection.in_atomic_block, "forget the hours in the transaction that deletes the events"
    # The hours themselves, not the span from the first to the last: a retention batch holds the
    # events received a retention ago and any whose delivery died late, days after its receipt; the
    # span forgot every hour in between, and the next overview counted days of events again.
    received = (
        events.order_by()
        .annotate(hour=TruncHour("received_at", tzinfo=UTC))
        .values_list("organization_id", "hour")
        .distinct()
    )
    hours_by_organization: dict[int, list[datetime]] = {}
    for organization_id, hour in received:
        hours_by_organization.setdefault(organization_id, []).append(hour)
    for organization_id, hours in sorted(hours_by_organization.items()):
        # Taken before the rows are deleted: a count under way is stored first, then deleted here.
        _lock(organization_id, shared=False)
        EventHour.objects.filter(organization_id=organization_id, hour__in=hours).delete()


def _lock(organization_id: int, *, shared: bool) -> None:
    if connection.vendor != "postgresql":
        return  # SQLite (embedded mode) runs one write at a time, each statement on the newest data
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s, %s)", [_LOCK_NAMESPACE, organization_id])


def forget_old_event_hours(now: datetime) -> QuerySet:
    """The stored hours no overview reads any more (for the retention run to delete)."""
    return EventHour.objects.filter(hour__lt=now - KEPT)
