"""Claiming behind a backlog: which other destinations are served, and at what cost in queries.

The fallback of claim_due_deliveries walks the destinations that have pending deliveries
(_waiting_longest) and, past WAITING_WALK_MAX_STEPS of them, probes every active destination
instead (_waiting_longest_by_probes). Both ways must choose the same destinations.
"""

from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.tests.delivering import claim_now

from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db


def postgresql_only():
    if connection.vendor != "postgresql":  # the embedded mode keeps a query per destination
        pytest.skip("the walk and the one-query fetch are PostgreSQL's")


class Seeder:
    def __init__(self, organization):
        self.organization = organization
        self.source = make_source(organization)
        self.made = 0

    def destination(self, name, **fields):
        destination, _ = make_destination(self.organization, f"http://127.0.0.1:9/{name}")
        if fields:
            Destination.objects.filter(pk=destination.pk).update(**fields)
        return destination

    def deliveries(self, destination, count, *, waited, status=Delivery.Status.PENDING):
        """``count`` deliveries to ``destination``; the first due ``waited`` ago, each next one a second later."""
        now = timezone.now()
        made = []
        for n in range(count):
            self.made += 1
            event = WebhookEvent.objects.create(
                organization=self.organization, source=self.source, body=b"{}", status="processed"
            )
            made.append(
                Delivery.objects.create(
                    organization=self.organization,
                    event=event,
                    destination=destination,
                    status=status,
                    next_attempt_at=now - waited + timedelta(seconds=n),
                )
            )
        return [d.pk for d in made]


@pytest.fixture
def seeder(organization):
    return Seeder(organization)


@pytest.fixture(params=["walk", "probes"])
def way(request, monkeypatch):
    if request.param == "probes":  # the walk gives way at once
        monkeypatch.setattr(delivery_service, "WAITING_WALK_MAX_STEPS", 1)
    return request.param


def test_behind_a_backlog_the_destinations_waiting_longest_are_served_within_their_caps(seeder, way):
    backlog = seeder.destination("backlog", max_concurrency=1)
    backlog_ids = seeder.deliveries(backlog, 30, waited=timedelta(hours=3))
    a_ids = seeder.deliveries(seeder.destination("a"), 2, waited=timedelta(minutes=30))
    b_ids = seeder.deliveries(seeder.destination("b", max_concurrency=2), 3, waited=timedelta(minutes=10))
    c_ids = seeder.deliveries(seeder.destination("c"), 1, waited=timedelta(seconds=5))
    # Waiting longer, yet not to be sent: paused, turned off, or not due yet (a back-off).
    seeder.deliveries(seeder.destination("paused", paused_at=timezone.now()), 2, waited=timedelta(hours=2))
    seeder.deliveries(seeder.destination("off", is_active=False), 2, waited=timedelta(hours=2))
    seeder.deliveries(seeder.destination("later"), 3, waited=-timedelta(hours=1))

    # 4 slots: the first look (16 candidates) is all backlog, which may take 1; then the
    # destination that has waited longest takes what it has, the next one what is left.
    claimed = {d.pk for d in delivery_service.claim_due_deliveries(4)}
    assert claimed == {backlog_ids[0], *a_ids, b_ids[0]}
    Delivery.objects.filter(pk__in=claimed).update(status=Delivery.Status.SUCCEEDED)

    # 6 slots: b up to its cap of 2, then c.
    claimed = {d.pk for d in delivery_service.claim_due_deliveries(6)}
    assert claimed == {backlog_ids[1], *b_ids[1:], c_ids[0]}


def test_behind_a_backlog_destinations_waiting_as_long_are_taken_in_the_order_they_were_made(seeder, way):
    backlog = seeder.destination("backlog", max_concurrency=1)
    Delivery.objects.filter(pk__in=seeder.deliveries(backlog, 10, waited=timedelta(hours=1))[:1]).update(
        status=Delivery.Status.IN_FLIGHT
    )
    same_age = [seeder.destination(f"same{n}") for n in range(3)]
    for destination in reversed(same_age):
        seeder.deliveries(destination, 1, waited=timedelta(minutes=5))
    Delivery.objects.filter(destination__in=same_age).update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    claimed = delivery_service.claim_due_deliveries(2)  # the first look: 8 candidates, all backlog
    assert {d.destination_id for d in claimed} == {same_age[0].pk, same_age[1].pk}  # not the last one made


def at_its_cap_behind_a_backlog(seeder):
    """A destination at its max_concurrency of 1 (a slow receiver) whose due deliveries, older than
    anyone else's, fill a first look of 16 rows: the claim looks beyond them."""
    backlog = seeder.destination("backlog", max_concurrency=1)
    seeder.deliveries(backlog, 1, waited=timedelta(hours=3), status=Delivery.Status.IN_FLIGHT)
    seeder.deliveries(backlog, 20, waited=timedelta(hours=3))
    return backlog


def test_behind_a_backlog_destinations_at_their_own_cap_do_not_fill_the_look(seeder, way):
    # Beyond the backlog, the destinations waiting longest are 4 more slow receivers, each with its
    # one attempt in flight and deliveries older than the rest: as many of them as there were free
    # slots took the whole look, none had room, and the claim came back empty while "quiet"'s
    # delivery was due (the example: 32 such destinations and 32 free slots).
    at_its_cap_behind_a_backlog(seeder)
    slow = [seeder.destination(f"slow{n}", max_concurrency=1) for n in range(4)]
    for destination in slow:
        seeder.deliveries(destination, 1, waited=timedelta(hours=2), status=Delivery.Status.IN_FLIGHT)
        seeder.deliveries(destination, 2, waited=timedelta(hours=2))
    # One with room left below its cap is still taken, by how long it has waited.
    roomy = seeder.destination("roomy", max_concurrency=2)
    seeder.deliveries(roomy, 1, waited=timedelta(hours=2), status=Delivery.Status.IN_FLIGHT)
    roomy_due = seeder.deliveries(roomy, 2, waited=timedelta(hours=1))
    quiet_due = seeder.deliveries(seeder.destination("quiet"), 1, waited=timedelta(minutes=1))

    claimed = delivery_service.claim_due_deliveries(4)

    assert sorted(d.pk for d in claimed) == sorted([roomy_due[0], *quiet_due])


def test_behind_a_backlog_destinations_whose_rate_limit_is_used_up_do_not_fill_the_look(seeder, way):
    # The same with destinations that have sent their rate_limit_per_second for this second: they
    # are passed over in this second, and take their turn in the next one.
    now = timezone.now()
    at_its_cap_behind_a_backlog(seeder)
    limited = [
        seeder.destination(
            f"limited{n}",
            rate_limit_per_second=1,
            rate_window_started_at=now.replace(microsecond=0),
            rate_window_count=1,
        )
        for n in range(4)
    ]
    limited_due = [seeder.deliveries(destination, 2, waited=timedelta(hours=2)) for destination in limited]
    quiet_due = seeder.deliveries(seeder.destination("quiet"), 1, waited=timedelta(minutes=1))

    claimed = delivery_service.claim_due_deliveries(4, now=now)
    assert [d.pk for d in claimed] == quiet_due

    claimed = delivery_service.claim_due_deliveries(4, now=now + timedelta(seconds=1))
    assert sorted(d.pk for d in claimed) == sorted(due[0] for due in limited_due)


def test_a_claim_behind_a_backlog_costs_the_same_queries_for_few_or_many_waiting_destinations(seeder, way):
    postgresql_only()
    backlog = seeder.destination("backlog", max_concurrency=1)
    seeder.deliveries(backlog, 130, waited=timedelta(hours=1))
    counts = []
    for waiting in (3, 30):
        Delivery.objects.exclude(destination=backlog).delete()
        for n in range(waiting):
            seeder.deliveries(seeder.destination(f"w{waiting}_{n}"), 1, waited=timedelta(minutes=n + 1))
        with CaptureQueriesContext(connection) as queries:
            claimed = delivery_service.claim_due_deliveries(32)
        assert len(claimed) == 1 + waiting
        Delivery.objects.filter(pk__in=[d.pk for d in claimed]).update(
            status=Delivery.Status.PENDING, attempt_count=0, claimed_at=None
        )
        counts.append(len(queries.captured_queries))
    assert counts[0] == counts[1]  # not one query per destination


def test_the_walk_gives_way_when_more_destinations_have_deliveries_waiting_than_it_may_visit(seeder, monkeypatch):
    postgresql_only()
    now = timezone.now()
    waiting = [seeder.destination(f"w{n}") for n in range(4)]
    for n, destination in enumerate(waiting):
        seeder.deliveries(destination, 1, waited=timedelta(minutes=10 - n))
    monkeypatch.setattr(delivery_service, "WAITING_WALK_MAX_STEPS", 5)
    assert delivery_service._waiting_longest(now, exclude=[waiting[0].pk], count=2) == [w.pk for w in waiting[1:3]]
    monkeypatch.setattr(delivery_service, "WAITING_WALK_MAX_STEPS", 4)
    assert delivery_service._waiting_longest(now, exclude=[waiting[0].pk], count=2) is None
    assert delivery_service._waiting_longest_by_probes(now, exclude=[waiting[0].pk], count=2) == [
        w.pk for w in waiting[1:3]
    ]
    # Nothing pending anywhere: an empty walk.
    Delivery.objects.all().delete()
    assert delivery_service._waiting_longest(now, exclude=[], count=2) == []


@pytest.mark.django_db(transaction=True)
def test_behind_a_backlog_a_delivery_another_dispatcher_holds_is_skipped(seeder, way):
    postgresql_only()
    backlog = seeder.destination("backlog", max_concurrency=1)
    seeder.deliveries(backlog, 10, waited=timedelta(hours=1))
    quiet = seeder.destination("quiet")
    held, free = seeder.deliveries(quiet, 2, waited=timedelta(minutes=5))
    settings = connection.settings_dict
    with psycopg.connect(
        dbname=settings["NAME"], user=settings["USER"], host=settings["HOST"], port=settings["PORT"] or 5432
    ) as other:
        other.execute("SELECT 1 FROM webhooks_delivery WHERE id = %s FOR NO KEY UPDATE", [held])
        claimed = delivery_service.claim_due_deliveries(2)  # the first look: 8 candidates, all backlog
        other.rollback()
    assert {d.pk for d in claimed} - {d.pk for d in claimed if d.destination_id == backlog.pk} == {free}


def test_a_paused_destination_s_older_backlog_neither_hides_others_nor_is_claimed(seeder, way):
    # A circuit-broken destination keeps receiving deliveries, all due and older than the rest:
    # the first look reads them (it no longer filters them row by row) and gives them no room.
    paused = seeder.destination("paused", paused_at=timezone.now())
    inactive = seeder.destination("inactive", is_active=False)
    seeder.deliveries(paused, 30, waited=timedelta(hours=2))
    seeder.deliveries(inactive, 5, waited=timedelta(hours=2))
    quiet = seeder.destination("quiet")
    waiting = seeder.deliveries(quiet, 3, waited=timedelta(minutes=1))

    claimed = delivery_service.claim_due_deliveries(4)  # a first look of 16 rows: all paused ones

    assert sorted(d.pk for d in claimed) == sorted(waiting)
    assert not Delivery.objects.filter(destination__in=[paused, inactive]).exclude(status="pending").exists()


def test_a_suspended_organization_s_deliveries_wait_until_it_is_active_again(seeder, way, other_organization):
    # An operator suspends a tenant (for abuse, say): its outgoing traffic and retries stop too.
    from organizations.models import Organization

    suspended = Seeder(other_organization)
    theirs = suspended.deliveries(suspended.destination("theirs"), 20, waited=timedelta(hours=1))
    ours = seeder.deliveries(seeder.destination("ours"), 2, waited=timedelta(minutes=1))
    Organization.objects.filter(pk=other_organization.pk).update(is_active=False)

    assert sorted(d.pk for d in delivery_service.claim_due_deliveries(4)) == sorted(ours)
    assert claim_now(theirs[0]) is None
    assert not Delivery.objects.filter(pk__in=theirs).exclude(status="pending").exists()

    Organization.objects.filter(pk=other_organization.pk).update(is_active=True)
    assert {d.pk for d in delivery_service.claim_due_deliveries(4)} <= set(theirs)


def claim_statements(limit: int) -> tuple[list, list[str]]:
    """What claim_due_deliveries(limit) returns, and the statements it ran (savepoints left out:
    the test's transaction turns the claim's own into one)."""
    with CaptureQueriesContext(connection) as queries:
        claimed = delivery_service.claim_due_deliveries(limit)
    statements = [
        query["sql"] for query in queries.captured_queries if not query["sql"].startswith(("SAVEPOINT", "RELEASE"))
    ]
    return claimed, statements


def test_a_claim_reads_the_sends_in_flight_once_per_lock(seeder):
    # The sends in flight used to be counted three ways per claim (per locked destination, per
    # organization, per destination and organization for the look beyond the backlog), each its
    # own statement. One grouped read after each lock serves all three.
    postgresql_only()
    backlog = seeder.destination("backlog", max_concurrency=1)
    seeder.deliveries(backlog, 1, waited=timedelta(hours=2), status=Delivery.Status.IN_FLIGHT)
    seeder.deliveries(backlog, 130, waited=timedelta(hours=1))
    other = seeder.deliveries(seeder.destination("other"), 1, waited=timedelta(minutes=1))

    claimed, statements = claim_statements(32)
    assert [d.pk for d in claimed] == other
    # The oldest due rows; the backlog's destination locked (its organization's claim lock taken in
    # the same statement), then the sends in flight; the walk; the other destination locked (and
    # its organization), then the sends in flight again (counts read before a lock
    # could miss a claim committed meanwhile); its oldest due rows; the claiming UPDATE, which
    # returns the claimed rows with their events and destinations (it was followed by their read).
    assert len(statements) == 8, "\n\n".join(statements)

    # Without a look beyond the backlog (the first look fills the claim): the oldest due rows, the
    # lock, the sends in flight, and the claiming UPDATE that returns the rows.
    Delivery.objects.filter(pk__in=other).update(status=Delivery.Status.SUCCEEDED)
    Delivery.objects.filter(destination=backlog, status=Delivery.Status.IN_FLIGHT).update(
        status=Delivery.Status.SUCCEEDED
    )
    claimed, statements = claim_statements(1)
    assert len(claimed) == 1
    assert len(statements) == 4, "\n\n".join(statements)
