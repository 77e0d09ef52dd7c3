"""The overview's numbers from what is kept for it: closed hours' event counts (EventHour) and each
succeeded delivery's latency, equal to counting the events and looking up each delivery's event."""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from datetime import UTC, timedelta

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from organizations.models import Organization
from webhooks.models import Delivery, EventHour, WebhookEvent
from webhooks.selectors import uuid7_floor
from webhooks.services import dashboard_stats, event_hours, lifecycle, processing
from webhooks.services import delivery as delivery_service
from webhooks.services.sender_marks import is_hookline_test_event, sender_mark_headers
from webhooks.services.source_deletion import source_deletion_run, source_request_deletion

from .factories import STRIPE_SECRET, make_destination, make_source
from .lock_waits import waits_for_a_lock
from .processes import run_on_embedded_sqlite
from .seeding import insert_rows
from .signing import post_stripe

pytestmark = pytest.mark.django_db

MICROSECOND = timedelta(microseconds=1)
HOUR = timedelta(hours=1)


def the_moment():
    """An overview's ``now`` seven minutes into an hour: the hour before is not closed yet, and the
    hour 24 hours back is cut in two by the day's start."""
    return event_hours.hour_of(timezone.now()) - timedelta(days=1) + timedelta(minutes=7, seconds=13, microseconds=5)


def add_event(source, at, *, rejected=False, test=False) -> WebhookEvent:
    event = event_row(source, at, rejected=rejected, test=test)
    event.save(force_insert=True)
    return event


_serials = itertools.count(1)  # each event's own provider id, and the low bits of its id


def event_row(source, at, *, rejected=False, test=False) -> WebhookEvent:
    serial = next(_serials)
    body = json.dumps({"id": f"evt_{serial}", "object": "event", "type": "invoice.paid"}).encode()
    return WebhookEvent(
        # A time-ordered id of its receipt, as ingest makes them.
        id=uuid.UUID(int=uuid7_floor(at).int | serial),
        organization_id=source.organization_id,
        source=source,
        provider_event_id=None if rejected else f"evt_{serial}",
        body=body,
        headers=sender_mark_headers(body, source_id=source.pk, now=at.timestamp()) if test else {},
        status=WebhookEvent.Status.REJECTED if rejected else WebhookEvent.Status.PROCESSED,
        received_at=at,
    )


def insert_event_rows(source, moments) -> list[uuid.UUID]:
    """The processed events event_row makes, received at ``moments``, inserted in one statement
    (seeding.insert_rows); their ids."""
    serials = [next(_serials) for _ in moments]
    ids = [uuid.UUID(int=uuid7_floor(at).int | serial) for serial, at in zip(serials, moments, strict=True)]
    insert_rows(
        WebhookEvent(organization_id=source.organization_id, source=source, status=WebhookEvent.Status.PROCESSED),
        len(ids),
        id=ids,
        provider_event_id=[f"evt_{serial}" for serial in serials],
        body=[
            json.dumps({"id": f"evt_{serial}", "object": "event", "type": "invoice.paid"}).encode()
            for serial in serials
        ],
        received_at=moments,
    )
    return ids


def a_week_of_edges(source, now) -> None:
    """Events at the edges that matter: the week's first hour and just before it, hour boundaries,
    the day's start, the hour not closed yet, the current hour; rejected requests and test sends."""
    this_hour = event_hours.hour_of(now)
    start_7d = this_hour - timedelta(hours=24 * 7 - 1)
    day_ago = now - timedelta(hours=24)
    boundary = this_hour - timedelta(hours=30)
    for at, kinds in (
        (start_7d - MICROSECOND, [{}]),  # before the week
        (start_7d, [{}, {}, {"rejected": True}]),
        (start_7d + timedelta(minutes=30), [{"test": True}, {"test": True, "rejected": True}, {}]),
        (boundary - MICROSECOND, [{}, {"rejected": True}]),
        (boundary, [{}]),
        (day_ago - timedelta(seconds=1), [{}, {"rejected": True}, {"test": True}]),  # a day and a second ago
        (day_ago, [{}]),
        (day_ago + timedelta(seconds=1), [{"rejected": True}, {"test": True}, {}]),
        (event_hours.hour_of(day_ago) + HOUR - MICROSECOND, [{}]),
        (event_hours.hour_of(day_ago) + HOUR, [{}, {"test": True}]),
        (this_hour - HOUR, [{"test": True}, {}]),  # the hour before: not closed at minute 7
        (this_hour - MICROSECOND, [{}, {"rejected": True}]),
        (this_hour, [{}]),
        (now - timedelta(seconds=1), [{"rejected": True}, {}]),
        (now, [{}]),
    ):
        for kind in kinds:
            add_event(source, at, **kind)
    for day in range(1, 7):
        for hours in (0, 5):
            add_event(source, now - timedelta(days=day, hours=hours))
            add_event(source, now - timedelta(days=day, hours=hours, minutes=3), rejected=True)


def counted_from_the_events(organization, now) -> dict:
    """What the overview's event numbers mean, read from every event of the organization."""
    this_hour = event_hours.hour_of(now)
    start_7d = this_hour - timedelta(hours=24 * 7 - 1)
    day_ago = now - timedelta(hours=24)
    hourly, day = {}, {"accepted": 0, "rejected": 0, "tests": 0}
    for event in WebhookEvent.objects.filter(organization=organization):
        test = is_hookline_test_event(
            event.headers, bytes(event.body), source_id=event.source_id, received_at=event.received_at.timestamp()
        )
        rejected = event.status == WebhookEvent.Status.REJECTED
        if not rejected and not test and start_7d <= event.received_at <= now:
            hour = event_hours.hour_of(event.received_at)
            hourly[hour] = hourly.get(hour, 0) + 1
        if day_ago <= event.received_at:
            kind = "rejected" if rejected and not test else "tests" if test and not rejected else "accepted"
            if not (rejected and test):  # a rejected test is in neither number
                day[kind] += 1
    return {
        "chart_7d": [hourly.get(start_7d + HOUR * n, 0) for n in range(24 * 7)],
        "chart_24h": [hourly.get(this_hour - HOUR * (23 - n), 0) for n in range(24)],
        "events_24h": day["accepted"],
        "rejected_24h": day["rejected"],
        "tests_24h": day["tests"],
    }


def shown(overview) -> dict:
    return {
        "chart_7d": [bar.count for bar in overview.chart_7d.bars],
        "chart_24h": [bar.count for bar in overview.chart_24h.bars],
        "events_24h": overview.events_24h,
        "rejected_24h": overview.rejected_24h,
        "tests_24h": overview.tests_24h,
    }


def test_the_overview_s_event_numbers_are_those_of_the_events_first_and_then_from_the_stored_hours(organization):
    source = make_source(organization)
    now = the_moment()
    a_week_of_edges(source, now)
    expected = counted_from_the_events(organization, now)
    assert (sum(expected["chart_7d"]), expected["tests_24h"]) == (27, 3)  # the seeding is what it says

    assert shown(dashboard_stats.organization_overview(organization=organization, now=now)) == expected
    # Every closed hour of the week is stored, empty ones too; the hour before this one (minute 7)
    # and this one are not.
    this_hour = event_hours.hour_of(now)
    start_7d = this_hour - timedelta(hours=24 * 7 - 1)
    stored = {row.hour.astimezone(UTC): row for row in EventHour.objects.filter(organization=organization)}
    assert sorted(stored) == [start_7d + HOUR * n for n in range(24 * 7 - 2)]
    assert [stored[hour].accepted for hour in sorted(stored)] == expected["chart_7d"][:-2]
    assert (stored[start_7d].accepted, stored[start_7d].rejected, stored[start_7d].tests) == (3, 1, 1)
    assert shown(dashboard_stats.organization_overview(organization=organization, now=now)) == expected

    # Ten minutes later the hour before is closed too, and counted as it was.
    later = now + timedelta(minutes=10)
    assert shown(dashboard_stats.organization_overview(organization=organization, now=later)) == (
        counted_from_the_events(organization, later)
    )
    assert EventHour.objects.get(organization=organization, hour=this_hour - HOUR).tests == 1


def test_a_closed_hour_is_read_from_its_stored_count_and_the_open_ones_from_the_events(organization):
    source = make_source(organization)
    now = the_moment()
    add_event(source, now - timedelta(hours=5))
    dashboard_stats.organization_overview(organization=organization, now=now)
    # Nothing stores an event in a closed hour (its received_at is when it arrived); one put there
    # behind the overview's back shows that the hour is not read again. In an open hour it counts.
    add_event(source, now - timedelta(hours=5))
    add_event(source, now - timedelta(minutes=1))
    overview = dashboard_stats.organization_overview(organization=organization, now=now)
    assert (overview.chart_7d.total, overview.events_24h) == (2, 2)
    assert counted_from_the_events(organization, now)["events_24h"] == 3


def test_the_stored_hours_are_the_organization_s_own(organization):
    other = Organization.objects.create(name="Other", slug="other")
    mine, theirs = make_source(organization), make_source(other)
    now = the_moment()
    for _ in range(3):
        add_event(theirs, now - timedelta(hours=4))
    add_event(mine, now - timedelta(hours=4))
    assert dashboard_stats.organization_overview(organization=organization, now=now).chart_7d.total == 1
    assert dashboard_stats.organization_overview(organization=other, now=now).chart_7d.total == 3
    assert EventHour.objects.get(organization=organization, hour=event_hours.hour_of(now) - 4 * HOUR).accepted == 1


def test_the_retention_purge_has_its_hours_counted_again(organization):
    source = make_source(organization)
    now = the_moment()
    a_week_of_edges(source, now)
    before = dashboard_stats.organization_overview(organization=organization, now=now)
    Organization.objects.filter(pk=organization.pk).update(retention_days=3)

    assert lifecycle.purge_expired_events(now=now) > 0

    after = dashboard_stats.organization_overview(organization=organization, now=now)
    assert shown(after) == counted_from_the_events(organization, now)
    assert after.chart_7d.total < before.chart_7d.total


def test_a_deleted_source_s_events_leave_the_stored_hours(organization):
    kept, doomed = make_source(organization, name="kept"), make_source(organization, name="doomed")
    now = the_moment()
    a_week_of_edges(kept, now)
    for hours in (3, 50, 100):
        add_event(doomed, now - timedelta(hours=hours))
    before = shown(dashboard_stats.organization_overview(organization=organization, now=now))
    assert before == counted_from_the_events(organization, now)

    source_request_deletion(source=doomed)
    assert source_deletion_run(source_id=doomed.pk).finished

    after = shown(dashboard_stats.organization_overview(organization=organization, now=now))
    assert after == counted_from_the_events(organization, now)
    assert sum(before["chart_7d"]) - sum(after["chart_7d"]) == 3


def test_the_retention_run_deletes_stored_hours_past_the_overview_s_week(organization):
    source = make_source(organization)
    now = the_moment()
    add_event(source, now - timedelta(days=2))
    old = EventHour.objects.create(
        organization=organization, hour=event_hours.hour_of(now) - timedelta(days=9), accepted=1, rejected=0, tests=0
    )
    dashboard_stats.organization_overview(organization=organization, now=now)
    lifecycle.purge_expired_events(now=now)
    assert not EventHour.objects.filter(pk=old.pk).exists()
    assert EventHour.objects.filter(organization=organization).count() == 24 * 7 - 2


@pytest.mark.django_db(transaction=True)
def test_a_deletion_waits_for_a_count_under_way_and_then_forgets_what_it_stored(organization):
    """A count read before a deletion committed and stored after it would stay wrong: the deletion
    waits for the count's commit, then deletes what it stored."""
    source = make_source(organization)
    now = the_moment()
    hour = event_hours.hour_of(now) - 3 * HOUR
    doomed = add_event(source, hour + timedelta(minutes=10))
    add_event(source, hour + timedelta(minutes=20))
    deleted = threading.Event()

    def delete_in_another_session():
        try:
            with transaction.atomic():
                batch = WebhookEvent.objects.filter(pk=doomed.pk)
                event_hours.forget_event_hours(batch)
                batch.delete()
            deleted.set()
        finally:
            connections.close_all()

    worker = threading.Thread(target=delete_in_another_session)
    with transaction.atomic():
        # A count under way: the shared lock taken and the hour read, not yet committed.
        found = event_hours._count_and_store(organization.pk, [hour])
        worker.start()
        assert waits_for_a_lock(worker)
        assert not deleted.is_set()
    worker.join(10)
    assert deleted.is_set()
    assert found[hour].accepted == 2
    assert not EventHour.objects.filter(organization=organization, hour=hour).exists()
    assert dashboard_stats.organization_overview(organization=organization, now=now).chart_7d.total == 1


@pytest.mark.django_db(transaction=True)
def test_a_count_waits_for_a_deletion_under_way_and_then_reads_what_is_left(organization):
    source = make_source(organization)
    now = the_moment()
    hour = event_hours.hour_of(now) - 3 * HOUR
    doomed = add_event(source, hour + timedelta(minutes=10))
    add_event(source, hour + timedelta(minutes=20))
    found = {}

    def count_in_another_session():
        try:
            found.update(event_hours._count_and_store(organization.pk, [hour]))
        finally:
            connections.close_all()

    worker = threading.Thread(target=count_in_another_session)
    with transaction.atomic():
        batch = WebhookEvent.objects.filter(pk=doomed.pk)
        event_hours.forget_event_hours(batch)
        batch.delete()
        worker.start()
        assert waits_for_a_lock(worker)
    worker.join(10)
    assert found[hour].accepted == 1
    assert EventHour.objects.get(organization=organization, hour=hour).accepted == 1


def test_a_succeeded_delivery_keeps_its_latency_and_the_percentiles_read_it(
    client, organization, httpserver, monkeypatch
):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("ok")
    for number in range(3):
        body = json.dumps({"id": f"evt_latency_{number}", "object": "event", "type": "invoice.paid"})
        assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    processing.process_event_batch()
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, threads=2, linger_seconds=0) == 3

    deliveries = list(Delivery.objects.select_related("event").filter(organization=organization))
    assert {delivery.status for delivery in deliveries} == {Delivery.Status.SUCCEEDED}
    for delivery in deliveries:
        assert delivery.latency == delivery.completed_at - delivery.event.received_at
    since = timezone.now() - timedelta(hours=24)
    measured = dashboard_stats._latency_percentiles(organization, since)
    assert measured[0] is not None

    # What the percentiles read is the stored latency: ...
    for number, delivery in enumerate(deliveries):
        Delivery.objects.filter(pk=delivery.pk).update(latency=timedelta(seconds=10 * (number + 1)))
    assert dashboard_stats._latency_percentiles(organization, since) == (20_000, 29_000)
    # ... and, for a delivery that succeeded before the column existed, its event's receipt.
    Delivery.objects.filter(pk=deliveries[2].pk).update(
        latency=None, completed_at=deliveries[2].event.received_at + timedelta(seconds=70)
    )
    assert dashboard_stats._latency_percentiles(organization, since) == (20_000, 65_000)


def test_a_retried_delivery_loses_its_latency_until_it_succeeds_again(
    client, organization, owner, httpserver, monkeypatch
):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("gone", status=410)
    body = json.dumps({"id": "evt_latency_retried", "object": "event", "type": "invoice.paid"})
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    processing.process_event_batch()
    delivery_service.dispatch_due_deliveries(max_seconds=5, threads=1, linger_seconds=0)
    delivery = Delivery.objects.get(organization=organization)
    assert (delivery.status, delivery.latency) == (Delivery.Status.DEAD, None)
    Delivery.objects.filter(pk=delivery.pk).update(latency=timedelta(seconds=1))  # as left by an old success
    delivery_service.delivery_retry(delivery=delivery, actor=owner)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.latency) == (Delivery.Status.PENDING, None)


def test_the_percentiles_look_up_no_event_of_a_delivery_that_has_its_latency(organization):
    """The event lookup is only for deliveries without a latency: on PostgreSQL, a subquery that
    COALESCE evaluates only then (EXPLAIN ANALYZE: the lookup never executed)."""
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    now = timezone.now()
    for number in range(20):
        event = add_event(source, now - timedelta(minutes=number + 1))
        Delivery.objects.create(
            organization=organization,
            event=event,
            destination=destination,
            status=Delivery.Status.SUCCEEDED,
            attempt_count=1,
            completed_at=event.received_at + timedelta(milliseconds=100),
            latency=timedelta(milliseconds=100),
        )
    sql, params = dashboard_stats._latency_percentiles_sql(organization, now - timedelta(hours=24))
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        raw = cursor.fetchone()[0]
    lookups = [node for node in plan_tree(raw) if node.get("Relation Name") == "webhooks_webhookevent"]
    assert lookups and all(node.get("Actual Loops", 0) == 0 for node in lookups)


EMBEDDED_OVERVIEW = """
import json
import uuid
from django.conf import settings
from datetime import timedelta
from django.utils import timezone
from organizations.models import Organization
from organizations.services import organization_create
from webhooks.models import Delivery, EventHour, WebhookEvent
from webhooks.selectors import uuid7_floor
from webhooks.services import dashboard_stats, event_hours, lifecycle
from webhooks.tests.factories import make_destination, make_source

organization = organization_create(name="Embedded", slug="embedded", owner_email="owner@embedded.example")
source = make_source(organization)
settings.ALLOW_PRIVATE_DESTINATIONS = True  # nothing is sent: the deliveries are made here
destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
now = event_hours.hour_of(timezone.now()) - timedelta(days=1) + timedelta(minutes=7)
for serial, (hours, status) in enumerate(
    ((100, "processed"), (100, "rejected"), (30, "processed"), (2, "processed"), (0, "processed"))
):
    at = now - timedelta(hours=hours)
    event = WebhookEvent.objects.create(
        id=uuid.UUID(int=uuid7_floor(at).int | serial), organization=organization, source=source, body=b"{}",
        status=status, received_at=at,
    )
    if status == "processed":
        Delivery.objects.create(
            id=uuid.UUID(int=uuid7_floor(at + timedelta(seconds=1)).int | serial),
            organization=organization, event=event, destination=destination, status="succeeded", attempt_count=1,
            completed_at=event.received_at + timedelta(seconds=hours + 1),
            latency=timedelta(seconds=5) if hours == 0 else None,
        )
first = dashboard_stats.organization_overview(organization=organization, now=now)
again = dashboard_stats.organization_overview(organization=organization, now=now)
Organization.objects.filter(pk=organization.pk).update(retention_days=3)
lifecycle.purge_expired_events(now=now)
purged = dashboard_stats.organization_overview(organization=organization, now=now)
print(json.dumps({
    "week": [first.chart_7d.total, again.chart_7d.total, purged.chart_7d.total],
    "day": [first.events_24h, again.events_24h, purged.events_24h],
    "latency": [first.latency_p50_ms, first.latency_p95_ms],
    "stored": EventHour.objects.filter(organization=organization).count(),
}))
"""


def test_the_stored_hours_and_latencies_work_in_the_embedded_sqlite_mode(tmp_path):
    result = run_on_embedded_sqlite(EMBEDDED_OVERVIEW, tmp_path)
    # Received 100 h ago (purged at 3 days' retention), 30 h, 2 h and now. The day's latencies: the
    # stored one (5 s, where its receipt would make it 1 s), and 3 s from the other's event; this
    # mode picks the value at the rank rather than interpolating.
    assert result == {"week": [4, 4, 3], "day": [2, 2, 2], "latency": [5000, 5000], "stored": 24 * 7 - 2}


@pytest.mark.django_db(transaction=True)
def test_the_overview_reads_the_succeeded_deliveries_it_counts_and_their_latencies_from_their_index(organization):
    # Measured at 2,460,000 deliveries (570,000 in the week): the failing destinations' successes of
    # the week were read from the table through the destination's every delivery (0.6 – 1.7 s of a
    # cold overview), and the day's latencies from the table too (0.2 – 0.4 s); both now read the
    # partial index of succeeded deliveries, which holds every column they need (migration 0044).
    source = make_source(organization)
    failing, _ = make_destination(organization, "http://127.0.0.1:9/failing", sources=[source])
    other, _ = make_destination(organization, "http://127.0.0.1:9/other", sources=[source])
    now = timezone.now()
    # Inserted as one statement per table (seeding.insert_rows): the same rows as event_row's and
    # bulk_create's, without a model instance each.
    numbers = range(3000)
    received = [now - timedelta(minutes=5 * number + 1) for number in numbers]
    event_ids = insert_event_rows(source, received)
    for destination in (failing, other):
        dead = [destination == failing and number % 50 == 0 for number in numbers]
        insert_rows(
            Delivery(organization=organization, destination=destination, attempt_count=1),
            len(numbers),
            id=[uuid.UUID(int=uuid7_floor(at + timedelta(milliseconds=5)).int | destination.pk) for at in received],
            event_id=event_ids,
            status=[Delivery.Status.DEAD if one else Delivery.Status.SUCCEEDED for one in dead],
            created_at=received,
            completed_at=[at + timedelta(milliseconds=120) for at in received],
            latency=[None if one else timedelta(milliseconds=120) for one in dead],
        )
    # Other tenants' deliveries of the day, as a shared table holds them: the day's range of the
    # primary key holds them too, the index of succeeded deliveries by organization does not.
    others = Organization.objects.create(name="Others", slug="others")
    their_source = make_source(others)
    their_destination, _ = make_destination(others, "http://127.0.0.1:9/theirs", sources=[their_source])
    their_received = [now - timedelta(seconds=14 * number + 1) for number in range(6000)]
    their_event_ids = insert_event_rows(their_source, their_received)
    insert_rows(
        Delivery(
            organization=others,
            destination=their_destination,
            status=Delivery.Status.SUCCEEDED,
            attempt_count=1,
            latency=timedelta(milliseconds=80),
        ),
        len(their_received),
        id=[Delivery._meta.pk.get_default() for _ in their_received],
        event_id=their_event_ids,
        completed_at=[at + timedelta(milliseconds=80) for at in their_received],
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE webhooks_delivery")  # as autovacuum leaves a big table

    with CaptureQueriesContext(connection) as captured:
        overview = dashboard_stats.organization_overview(organization=organization, now=now)
    [row] = overview.failing_destinations
    assert (row.destination, row.dead) == (failing, 41)
    week = uuid7_floor(overview.failing_since)
    assert (
        row.succeeded
        == Delivery.objects.filter(
            destination=failing, status=Delivery.Status.SUCCEEDED, id__gte=week, event_id__gte=week
        ).count()
    )
    assert (overview.latency_p50_ms, overview.latency_p95_ms) == (120, 120)
    counted = [
        query["sql"]
        for query in captured.captured_queries
        if 'AS "succeeded" FROM "webhooks_delivery"' in query["sql"] or "percentile_cont" in query["sql"]
    ]
    assert len(counted) == 2
    for query in counted:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN (FORMAT JSON) " + query)
            raw = cursor.fetchone()[0]
        nodes = [node for node in plan_tree(raw) if node.get("Relation Name") == "webhooks_delivery"]
        assert [(node["Node Type"], node.get("Index Name")) for node in nodes] == [
            ("Index Only Scan", "delivery_succeeded")
        ], query


def plan_tree(raw) -> list[dict]:
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    nodes, waiting = [], [plan]
    while waiting:
        node = waiting.pop()
        nodes.append(node)
        waiting.extend(node.get("Plans", []))
    return nodes


def test_a_deletion_forgets_only_the_hours_its_events_were_received_in(organization):
    """A retention batch holds the events received a retention ago and, with them, any whose delivery
    died late (days of retries): forgetting every hour between the two had the next overview count
    days of events again, each hourly run. Only the hours that lost an event are counted again."""
    source = make_source(organization)
    now = the_moment()
    this_hour = event_hours.hour_of(now)
    late = add_event(source, this_hour - timedelta(days=5, minutes=-20))
    recent = add_event(source, this_hour - timedelta(hours=30, minutes=-10))
    add_event(source, this_hour - timedelta(days=3))
    dashboard_stats.organization_overview(organization=organization, now=now)
    stored = EventHour.objects.filter(organization=organization).count()

    with transaction.atomic():
        batch = WebhookEvent.objects.filter(pk__in=[late.pk, recent.pk])
        event_hours.forget_event_hours(batch)
        batch.delete()

    forgotten = {event_hours.hour_of(late.received_at), event_hours.hour_of(recent.received_at)}
    assert EventHour.objects.filter(organization=organization).count() == stored - 2
    assert not EventHour.objects.filter(organization=organization, hour__in=forgotten).exists()
    assert EventHour.objects.get(organization=organization, hour=this_hour - timedelta(days=3)).accepted == 1
    assert shown(dashboard_stats.organization_overview(organization=organization, now=now)) == (
        counted_from_the_events(organization, now)
    )


@pytest.mark.django_db(transaction=True)
def test_hours_counted_for_an_organization_deleted_meanwhile_are_shown_not_a_500(organization):
    # The organization's row gone between the page's look-up and the count's commit (its deletion
    # finished meanwhile): the foreign key is checked at commit, past the store's own except, and
    # the overview failed with it instead of showing the counts without storing them.
    now = the_moment()
    since = event_hours.hour_of(now) - 5 * HOUR
    gone = Organization.objects.create(name="Gone", slug="gone")
    gone_id = gone.pk
    Organization.objects.filter(pk=gone_id).delete()

    counts = event_hours.hourly_counts(gone_id, since, now)

    assert counts[since] == event_hours.HourCounts()
    assert not EventHour.objects.filter(organization_id=gone_id).exists()
