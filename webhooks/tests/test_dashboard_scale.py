"""Dashboard reads that must cost in proportion to what they show, not to the tenant's history.

Measured on a tenant with 300,000 events over 30 days; here, the query plans and query counts
that decide it, on a few rows (the planner is shown only index paths, so that the plan says
which index can serve each query rather than what is cheapest on a near-empty table).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client, TestCase
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from organizations.services import organization_create
from webhooks.models import Delivery, DeliveryAttempt, WebhookEvent
from webhooks.selectors import EventFilters, event_page, uuid7_floor
from webhooks.services import dashboard_stats, operations
from webhooks.services import delivery as delivery_service

from .dashboard_helpers import build_world, dead_delivery, work_driven_by_the_test
from .factories import make_destination
from .seeding import insert_rows

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda: None)


def plan_nodes(sql: str, params) -> list[dict]:
    """Every node of the plan PostgreSQL picks for ``sql`` when it may not read a table whole."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        raw = cursor.fetchone()[0]
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    nodes, waiting = [], [plan]
    while waiting:
        node = waiting.pop()
        nodes.append(node)
        waiting.extend(node.get("Plans", []))
    return nodes


def scans_without_condition(nodes: list[dict], tables: set[str]) -> list[str]:
    """Scans of ``tables`` that read them whole: a sequential scan, or an index walked end to end."""
    return [
        f"{node['Node Type']} on {node['Relation Name']}"
        for node in nodes
        if node.get("Relation Name") in tables
        and not (node.get("Index Cond") or node.get("Recheck Cond"))
        and node["Node Type"] != "Bitmap Heap Scan"
    ]


def id_at(moment, serial: int) -> uuid.UUID:
    """A time-ordered id of ``moment``, as uuid7 makes them (``serial`` keeps them apart)."""
    return uuid.UUID(int=uuid7_floor(moment).int | serial)


def history(world, *, days: int, per_day: int) -> None:
    """A month of delivered events, spread evenly, each with its one successful attempt (inserted
    as one statement per table, seeding.insert_rows: the dashboard only reads them)."""
    now = timezone.now()
    count = days * per_day
    received = [now - timedelta(days=days) + timedelta(seconds=serial * 86400 // per_day) for serial in range(count)]
    event_ids = [id_at(at, serial) for serial, at in enumerate(received)]
    delivery_ids = [id_at(at + timedelta(milliseconds=5), serial) for serial, at in enumerate(received)]
    organization_id = world.source.organization_id
    insert_rows(
        WebhookEvent(
            organization_id=organization_id,
            source=world.source,
            event_type="invoice.paid",
            body=b"{}",
            status=WebhookEvent.Status.PROCESSED,
        ),
        count,
        id=event_ids,
        provider_event_id=[f"evt_history_{serial}" for serial in range(count)],
        received_at=received,
    )
    insert_rows(
        Delivery(
            organization_id=organization_id,
            destination=world.destination,
            status=Delivery.Status.SUCCEEDED,
            attempt_count=1,
        ),
        count,
        id=delivery_ids,
        event_id=event_ids,
        created_at=received,
        completed_at=[at + timedelta(milliseconds=120) for at in received],
    )
    insert_rows(
        DeliveryAttempt(organization_id=organization_id, attempt_number=1, response_status=200),
        count,
        id=[id_at(at + timedelta(milliseconds=10), serial) for serial, at in enumerate(received)],
        delivery_id=delivery_ids,
        started_at=received,
    )
    with connection.cursor() as cursor:
        for table in ("webhooks_webhookevent", "webhooks_delivery", "webhooks_deliveryattempt"):
            cursor.execute(f"ANALYZE {table}")


@pytest.fixture(scope="module")
def month(django_db_setup, django_db_blocker):
    """A tenant with a month of history (build_world's, then history(days=30, per_day=300)), seeded
    once for the tests that only read it: in a transaction around theirs, as Django's TestCase
    does for setUpTestData, so each test's own changes are rolled back and the month at the end."""
    with django_db_blocker.unblock(), pytest.MonkeyPatch.context() as monkeypatch:
        work_driven_by_the_test(monkeypatch)  # nothing published to a queue for the ingested event
        atomics = TestCase._enter_atomics()
        try:
            organization = organization_create(name="History", slug="history", owner_email="owner@history.example")
            world = build_world(Client(), organization)
            history(world, days=30, per_day=300)
        except BaseException:
            TestCase._rollback_atomics(atomics)
            raise
    yield organization, world
    with django_db_blocker.unblock():
        TestCase._rollback_atomics(atomics)


def test_the_overview_latency_reads_the_window_s_deliveries_and_their_events_by_index(month):
    organization, world = month
    since = timezone.now() - timedelta(hours=24)
    with CaptureQueriesContext(connection) as captured:
        assert dashboard_stats._latency_percentiles(organization, since) == (120, 120)
    (query,) = [query["sql"] for query in captured.captured_queries if "percentile_cont" in query["sql"]]
    # Measured at 300,000 events: an IN (subquery) read every delivery of the table (a parallel
    # sequential scan, 130 ms), and a plain join hashed every event of the table.
    nodes = plan_nodes(query, None)
    assert scans_without_condition(nodes, {"webhooks_delivery", "webhooks_webhookevent"}) == []


def test_a_destination_s_last_failure_is_looked_for_among_failed_attempts_only(month):
    # Measured at 500,000 attempts: for a destination that never failed, the newest-first walk
    # of every attempt read the whole table (490 ms) before finding nothing.
    _, world = month  # its destination has one dead delivery
    with CaptureQueriesContext(connection) as captured:
        health = dashboard_stats.destination_health(destination=world.destination)
    assert health.last_failure_error == "HTTP 503"
    (query,) = [query["sql"] for query in captured.captured_queries if 'FROM "webhooks_destination"' in query["sql"]]
    nodes = plan_nodes(query, None)
    assert "attempt_failed" in {node.get("Index Name") for node in nodes}
    assert scans_without_condition(nodes, {"webhooks_deliveryattempt"}) == []


def test_the_destinations_list_costs_the_same_queries_for_one_destination_or_many(client, owner, organization):
    world = build_world(client, organization)  # one destination, with a dead delivery
    client.force_login(owner)
    url = reverse("dashboard:destinations", args=[organization.slug])

    def listed() -> tuple[int, str]:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url)
        assert response.status_code == 200
        return len(captured.captured_queries), response.content.decode()

    one, _ = listed()
    for number in range(4):
        destination, _ = make_destination(organization, f"http://127.0.0.1:9/other/{number}", sources=[world.source])
        dead_delivery(world.event, destination)
    many, page = listed()
    # Measured with 4 destinations at 300,000 events: 2 queries each, 60 to 500 ms each.
    assert many == one
    # Each row still shows its own numbers and its own last failure.
    assert page.count("1 failed</a>") == 5
    assert ">never<" not in page


def test_a_destination_s_counts_of_failed_events_are_read_from_its_failed_deliveries_only(month):
    # Measured at 2,460,000 deliveries (570,000 in the week): counting distinct events over the
    # week's every delivery sorted them all on disk (1.3 s); the failed ones have their own index.
    organization, world = month  # its destination has one dead delivery
    Delivery.objects.create(  # its replay, dead too: one event, two deliveries
        organization_id=organization.pk,
        event=world.event,
        destination=world.destination,
        is_replay=True,
        status=Delivery.Status.DEAD,
        attempt_count=1,
        completed_at=timezone.now(),
    )
    with CaptureQueriesContext(connection) as captured:
        health = dashboard_stats.destination_health(destination=world.destination)
    assert (health.dead, health.failed_events) == (2, 1)
    (query,) = [query["sql"] for query in captured.captured_queries if "COUNT(DISTINCT" in query["sql"]]
    nodes = plan_nodes(query, None)
    assert scans_without_condition(nodes, {"webhooks_delivery"}) == []
    assert {node.get("Index Name") for node in nodes if node.get("Relation Name") == "webhooks_delivery"} == {
        "delivery_failed"
    }


def test_the_overview_counts_failing_destinations_from_failed_deliveries_only(month):
    # Measured at 2,460,000 deliveries (570,000 in the week): the distinct events per destination
    # were counted over the week's every delivery, sorted on disk (0.8 s of a cold overview).
    organization, world = month  # its destination has one dead delivery
    with CaptureQueriesContext(connection) as captured:
        overview = dashboard_stats.organization_overview(organization=organization)
    [row] = overview.failing_destinations
    assert (row.destination, row.dead, row.retrying) == (world.destination, 1, 0)
    assert row.succeeded > 0  # the week's successful deliveries there, counted apart
    (query,) = [query["sql"] for query in captured.captured_queries if "COUNT(DISTINCT" in query["sql"]]
    nodes = plan_nodes(query, None)
    assert {node.get("Index Name") for node in nodes if node.get("Relation Name") == "webhooks_delivery"} == {
        "delivery_failed"
    }


def test_a_deep_page_of_events_to_a_destination_looks_for_deliveries_below_its_cursor(client, organization):
    # Measured at 2,460,000 deliveries: the page 26 days back merged the events with the
    # deliveries to the destination in id order from the newest one (2 s), the cursor bounding the
    # events only. Bounded, the walk of deliveries starts at the page.
    world = build_world(client, organization)
    history(world, days=3, per_day=100)
    before = WebhookEvent.objects.filter(organization=organization).order_by("id")[150].id
    filters = EventFilters(destination_id=world.destination.pk)
    with CaptureQueriesContext(connection) as captured:
        page = event_page(organization=organization, filters=filters, before=before)
    assert page.events and all(event.id < before for event in page.events)
    (query,) = [query["sql"] for query in captured.captured_queries if "EXISTS" in query["sql"]]
    assert f""""event_id" < '{before.hex}'::uuid""" in query.split("EXISTS", 1)[1]
