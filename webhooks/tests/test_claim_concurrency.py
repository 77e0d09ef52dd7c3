"""Dispatchers claiming at the same time, each on its own connection (PostgreSQL).

The claim locks the destinations, then its organizations' claim locks, and counts the sends in
flight after the locks, so that whoever held a destination or an organization before has committed
its claim: together, concurrent claims never take one delivery twice, never exceed a destination's
max_concurrency or its rate limit for the second, nor an organization's max_concurrency, and never
take the deliveries of a paused or inactive destination, a suspended organization or one being
deleted.
"""

import threading
import time
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from organizations.models import Organization
from organizations.services import organization_create
from webhooks.models import Delivery
from webhooks.services import delivery as delivery_service

from .test_claiming_at_scale import Seeder

pytestmark = pytest.mark.django_db(transaction=True)

DISPATCHERS = 4
ROUNDS = 6


def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time: nothing to race")


def claim_concurrently(now=None, limit=3) -> list[int]:
    """The ids claimed by DISPATCHERS threads, each claiming ROUNDS times at the same moments."""
    barrier = threading.Barrier(DISPATCHERS)
    claimed: list[int] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def dispatcher():
        try:
            for _ in range(ROUNDS):
                barrier.wait()
                taken = [d.pk for d in delivery_service.claim_due_deliveries(limit, now)]
                with guard:
                    claimed.extend(taken)
        except BaseException as exc:  # (any: the test reports it, rather than a thread dying unseen)
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=dispatcher) for _ in range(DISPATCHERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return claimed


@pytest.fixture
def widened_race(monkeypatch):
    """Holds each claim a moment before and after the destinations' lock, where claims committed by
    other dispatchers must be seen by the read of the sends in flight: a wrong order of the two
    loses the race often, not always (the assertions hold whatever the interleaving)."""
    locked_destinations = delivery_service._locked_destinations

    def slow_lock(*args):
        time.sleep(0.005)  # (were the sends in flight read before the lock, a claim would commit here)
        locked = locked_destinations(*args)
        time.sleep(0.005)
        return locked

    monkeypatch.setattr(delivery_service, "_locked_destinations", slow_lock)


def test_concurrent_claims_take_each_delivery_once_within_each_destination_s_cap(organization, widened_race):
    postgresql_only()
    seeder = Seeder(organization)
    narrow = seeder.destination("narrow", max_concurrency=2)
    wide = seeder.destination("wide", max_concurrency=5)
    seeder.deliveries(narrow, 30, waited=timedelta(hours=1))
    seeder.deliveries(wide, 30, waited=timedelta(minutes=30))

    claimed = claim_concurrently()

    assert [pk for pk, times in Counter(claimed).items() if times > 1] == []
    in_flight = Counter(
        Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT).values_list("destination_id", flat=True)
    )
    assert in_flight == {narrow.pk: 2, wide.pk: 5}
    assert sorted(claimed) == sorted(
        Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT).values_list("pk", flat=True)
    )
    assert set(Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT).values_list("attempt_count", flat=True)) == {1}


def test_concurrent_claims_keep_a_destination_s_rate_limit_for_the_second(organization, widened_race):
    postgresql_only()
    seeder = Seeder(organization)
    limited = seeder.destination("limited", max_concurrency=50, rate_limit_per_second=3)
    seeder.deliveries(limited, 30, waited=timedelta(hours=1))

    claimed = claim_concurrently(now=timezone.now())  # one second for every claim

    assert len(claimed) == len(set(claimed)) == 3
    limited.refresh_from_db()
    assert limited.rate_window_count == 3


def test_concurrent_claims_never_take_deliveries_that_must_wait(organization, other_organization, widened_race):
    postgresql_only()
    seeder = Seeder(organization)
    paused = seeder.destination("paused", paused_at=timezone.now())
    inactive = seeder.destination("inactive", is_active=False)
    # The oldest due deliveries, so that the first look reaches all four destinations (their lock
    # must give them no room) and the look beyond it runs too (its walk must pass them over).
    waiting = seeder.deliveries(paused, 5, waited=timedelta(hours=5))
    waiting += seeder.deliveries(inactive, 5, waited=timedelta(hours=5))
    for name, change in (
        ("suspended", {"is_active": False}),
        ("being-deleted", {"is_active": False, "deletion_requested_at": timezone.now()}),
    ):
        tenant = organization_create(name=name, slug=name, owner_email=f"owner@{name}.example")
        tenant_seeder = Seeder(tenant)
        waiting += tenant_seeder.deliveries(tenant_seeder.destination(name), 5, waited=timedelta(hours=5))
        Organization.objects.filter(pk=tenant.pk).update(**change)
    backlog = seeder.destination("backlog", max_concurrency=1)
    seeder.deliveries(backlog, 40, waited=timedelta(hours=4))
    other = Seeder(other_organization)
    sendable = other.deliveries(other.destination("open"), 5, waited=timedelta(minutes=1))

    claimed = claim_concurrently()

    assert not set(claimed) & set(waiting)
    assert set(sendable) <= set(claimed)
    assert len(claimed) == len(set(claimed))
    assert Delivery.objects.filter(destination=backlog, status=Delivery.Status.IN_FLIGHT).count() == 1


def in_flight_of(organization) -> int:
    return Delivery.objects.filter(organization=organization, status=Delivery.Status.IN_FLIGHT).count()


def test_organizations_with_ids_past_32_bits_are_claimed_within_their_caps(organization, organization_ids_from):
    # Organization ids are bigint: one past 2**31 - 1 must neither fail every claim that reaches
    # its destinations (for every tenant) nor escape its cap. Its claim lock's key here is the same
    # as the small organization's: they share the lock, and concurrent claims neither deadlock nor
    # take past either cap.
    postgresql_only()
    organization_ids_from(2**31 + organization.pk)
    large = organization_create(name="Initech", slug="initech", owner_email="owner@initech.example")
    assert large.pk == 2**31 + organization.pk
    Organization.objects.filter(pk__in=[organization.pk, large.pk]).update(max_concurrency=3)
    small_seeder, large_seeder = Seeder(organization), Seeder(large)
    for n in range(4):
        small_seeder.deliveries(small_seeder.destination(f"small-{n}"), 3, waited=timedelta(hours=2, minutes=n))
        large_seeder.deliveries(large_seeder.destination(f"large-{n}"), 3, waited=timedelta(hours=1, minutes=n))

    claimed = claim_concurrently()

    assert len(claimed) == len(set(claimed))
    assert in_flight_of(organization) == 3
    assert in_flight_of(large) == 3


def test_two_dispatchers_on_different_destinations_keep_their_organization_s_cap(organization, monkeypatch):
    # Each destination has room; only the organization's cap (2) binds. The first dispatcher is
    # held between its read of the sends in flight and its claiming UPDATE while the second claims
    # on its own connection: the second locks other destinations (the first holds the oldest
    # deliveries' rows), and without the organization's lock it counted nothing in flight and took
    # two, three with the first's. With it, it waits for the first to commit and takes the one left.
    postgresql_only()
    Organization.objects.filter(pk=organization.pk).update(max_concurrency=2)
    seeder = Seeder(organization)
    for n in range(8):
        seeder.deliveries(seeder.destination(f"receiver-{n}", max_concurrency=5), 1, waited=timedelta(hours=8 - n))

    first_counted, first_may_go = threading.Event(), threading.Event()
    read_in_flight = delivery_service._in_flight

    def held_in_flight():
        in_flight = read_in_flight()
        if threading.current_thread().name == "first":
            first_counted.set()
            first_may_go.wait()
        return in_flight

    monkeypatch.setattr(delivery_service, "_in_flight", held_in_flight)
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def dispatcher(limit):
        try:
            claimed[threading.current_thread().name] = [d.pk for d in delivery_service.claim_due_deliveries(limit)]
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=dispatcher, args=(1,), name="first")  # its first look: 4 deliveries
    second = threading.Thread(target=dispatcher, args=(8,), name="second")
    first.start()
    assert first_counted.wait(30)
    second.start()
    # Until the second has claimed (the race lost) or waits for the first's lock on the organization.
    for _ in range(3000):
        if not second.is_alive():
            break
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks JOIN pg_database ON pg_database.oid = pg_locks.database"
                " WHERE locktype = 'advisory' AND NOT granted AND datname = current_database()"
            )
            if cursor.fetchone()[0]:
                break
        time.sleep(0.01)
    first_may_go.set()
    first.join()
    second.join()

    assert not errors, errors
    assert len(claimed["first"]) == 1
    assert len(claimed["second"]) == 1
    assert in_flight_of(organization) == 2


def test_concurrent_claims_keep_an_organization_s_cap_over_many_destinations(
    organization, other_organization, widened_race
):
    postgresql_only()
    Organization.objects.filter(pk=organization.pk).update(max_concurrency=3)
    Organization.objects.filter(pk=other_organization.pk).update(max_concurrency=10)
    seeder = Seeder(organization)
    ours = [seeder.destination(f"ours-{n}", max_concurrency=5) for n in range(10)]
    for n, destination in enumerate(ours):
        seeder.deliveries(destination, 5, waited=timedelta(minutes=50 - n))
    # The other tenant's destinations keep their own caps and rate limit, whatever ours are doing.
    other = Seeder(other_organization)
    narrow = other.destination("narrow", max_concurrency=2)
    limited = other.destination("limited", max_concurrency=50, rate_limit_per_second=1)
    other.deliveries(narrow, 10, waited=timedelta(hours=2))
    other.deliveries(limited, 10, waited=timedelta(hours=2))

    claimed = claim_concurrently(now=timezone.now())  # one second for every claim

    assert len(claimed) == len(set(claimed))
    assert in_flight_of(organization) == 3
    in_flight = Counter(
        Delivery.objects.filter(status=Delivery.Status.IN_FLIGHT).values_list("destination_id", flat=True)
    )
    assert {pk: count for pk, count in in_flight.items() if pk in {narrow.pk, limited.pk}} == {
        narrow.pk: 2,
        limited.pk: 1,
    }
    assert all(in_flight[destination.pk] <= 5 for destination in ours)


def test_the_look_beyond_the_backlog_passes_over_an_organization_another_claim_holds(organization, other_organization):
    # The first look holds the other tenant's claim lock (its backlog's destination, at its cap);
    # the look beyond it reaches this tenant, whose id is lower: waiting for it there could
    # deadlock with a claim holding it and waiting for the other, so it is only tried, and left to
    # the claim that holds it.
    postgresql_only()
    assert organization.pk < other_organization.pk
    other = Seeder(other_organization)
    backlog = other.destination("backlog", max_concurrency=1)
    other.deliveries(backlog, 1, waited=timedelta(hours=3), status=Delivery.Status.IN_FLIGHT)
    other.deliveries(backlog, 40, waited=timedelta(hours=2))
    seeder = Seeder(organization)
    ours = seeder.deliveries(seeder.destination("ours"), 3, waited=timedelta(minutes=1))

    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    lock = [delivery_service.ORGANIZATION_CLAIM_LOCK_SPACE, organization.pk]
    with psycopg.connect(**params, autocommit=True) as other_dispatcher:  # mid-claim for this tenant
        other_dispatcher.execute("SELECT pg_advisory_lock(%s, %s)", lock)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")  # (a wait would fail the claim, not hang the test)
        try:
            assert delivery_service.claim_due_deliveries(4) == []
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        other_dispatcher.execute("SELECT pg_advisory_unlock(%s, %s)", lock)

    assert sorted(d.pk for d in delivery_service.claim_due_deliveries(4)) == sorted(ours)


@pytest.fixture(autouse=True)
def claims_wait_again():
    # A test whose claim timed out leaves this process's claims only trying for a while.
    yield
    delivery_service._claims_only_try_until = 0.0


@pytest.fixture
def short_claim_lock_wait(monkeypatch):
    """The stalled-holder tests wait out CLAIM_LOCK_TIMEOUT once or twice each: what they prove
    (the claim gives up and passes the held organization over) does not depend on its length, and
    nothing else contends for a lock in them, so a short bound spares them the production 2 s."""
    monkeypatch.setattr(delivery_service, "CLAIM_LOCK_TIMEOUT", "250ms")


def claim_in_a_thread(limit: int) -> list[int]:
    """The ids claimed by claim_due_deliveries(limit) on a connection of its own; fails the test
    if the claim is still blocked long after CLAIM_LOCK_TIMEOUT (a liveness check, not a timing)."""
    claimed: list[int] = []
    errors: list[BaseException] = []

    def dispatcher():
        try:
            claimed.extend(d.pk for d in delivery_service.claim_due_deliveries(limit))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=dispatcher, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the claim is still waiting for the stalled claimer's organization lock"
    assert not errors, errors
    return claimed


@pytest.mark.parametrize("stalled_is_lower", [True, False], ids=["stalled-tenant-first", "stalled-tenant-last"])
def test_a_claimer_stalled_holding_an_organization_s_lock_stops_no_other_tenant(
    organization, other_organization, stalled_is_lower, short_claim_lock_wait
):
    # A dispatcher frozen mid-claim (stopped, paused, partitioned off with its session idle in
    # transaction) holds its organization's claim lock for as long as that lasts. The claims that
    # reach that organization give up waiting for it and pass it over; the other tenant's
    # deliveries are claimed; once the holder is gone, the organization's are claimed again.
    postgresql_only()
    stalled, flowing = (organization, other_organization) if stalled_is_lower else (other_organization, organization)
    stalled_seeder, flowing_seeder = Seeder(stalled), Seeder(flowing)
    # The stalled tenant's deliveries the oldest, so that the first look reaches them.
    held_back = stalled_seeder.deliveries(stalled_seeder.destination("stalled"), 3, waited=timedelta(hours=2))
    sendable = flowing_seeder.deliveries(flowing_seeder.destination("flowing"), 3, waited=timedelta(hours=1))

    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    frozen_claimer = psycopg.connect(**params)  # a transaction left open, as a stalled claim's
    try:
        frozen_claimer.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", [delivery_service.ORGANIZATION_CLAIM_LOCK_SPACE, stalled.pk]
        )

        claimed = claim_in_a_thread(10)

        assert sorted(claimed) == sorted(sendable)
        assert not Delivery.objects.filter(pk__in=held_back).exclude(status=Delivery.Status.PENDING).exists()
    finally:
        frozen_claimer.close()  # (its transaction rolled back: the lock is let go)

    assert sorted(claim_in_a_thread(10)) == sorted(held_back)


def test_a_stalled_tenant_with_many_destinations_is_passed_over_by_the_look_beyond_the_backlog_too(
    organization, other_organization, short_claim_lock_wait
):
    # The stalled tenant's deliveries fill the first look, and its other destinations have the
    # deliveries that waited longest after them: the look beyond the backlog must pass over those
    # as well, not choose them, fail to take their organization's lock and come back empty (the
    # dispatcher would stop, and so would every dispatcher after it, for as long as the stall lasts).
    postgresql_only()
    stalled_seeder, flowing_seeder = Seeder(organization), Seeder(other_organization)
    limit = 2
    stalled_seeder.deliveries(stalled_seeder.destination("stalled-backlog"), limit * 4, waited=timedelta(hours=5))
    for n in range(3):
        stalled_seeder.deliveries(stalled_seeder.destination(f"stalled-{n}"), 1, waited=timedelta(hours=4 - n))
    sendable = flowing_seeder.deliveries(flowing_seeder.destination("flowing"), limit, waited=timedelta(hours=1))

    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    frozen_claimer = psycopg.connect(**params)
    try:
        frozen_claimer.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)",
            [delivery_service.ORGANIZATION_CLAIM_LOCK_SPACE, organization.pk],
        )
        assert sorted(claim_in_a_thread(limit)) == sorted(sendable)
    finally:
        frozen_claimer.close()


def test_after_a_timed_out_wait_the_next_claims_pass_the_stalled_tenant_over_without_waiting_again(
    organization, other_organization, caplog, short_claim_lock_wait
):
    # Each wait for a stalled holder would cost CLAIM_LOCK_TIMEOUT again, for as long as the stall
    # lasts: after one, this process's claims only try the organizations' locks for a while.
    postgresql_only()
    stalled_seeder, flowing_seeder = Seeder(organization), Seeder(other_organization)
    stalled_destination = stalled_seeder.destination("stalled")
    flowing_destination = flowing_seeder.destination("flowing")
    stalled_seeder.deliveries(stalled_destination, 2, waited=timedelta(hours=3))
    first = flowing_seeder.deliveries(flowing_destination, 2, waited=timedelta(hours=2))

    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    frozen_claimer = psycopg.connect(**params)
    try:
        frozen_claimer.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)",
            [delivery_service.ORGANIZATION_CLAIM_LOCK_SPACE, organization.pk],
        )
        with caplog.at_level("WARNING", logger=delivery_service.logger.name):
            assert sorted(claim_in_a_thread(10)) == sorted(first)
            waited = [r for r in caplog.records if "waited over" in r.getMessage()]
            assert len(waited) == 1
            # The stalled tenant's deliveries are still the oldest due; new ones of the other arrive.
            Delivery.objects.filter(pk__in=first).update(status=Delivery.Status.SUCCEEDED)
            second = flowing_seeder.deliveries(flowing_destination, 2, waited=timedelta(hours=1))
            assert sorted(claim_in_a_thread(10)) == sorted(second)
            # No second wait: the claim only tried the stalled tenant's lock.
            assert len([r for r in caplog.records if "waited over" in r.getMessage()]) == 1
    finally:
        frozen_claimer.close()


def test_the_claim_s_lock_timeout_does_not_outlive_its_statement(organization):
    # The bound on the wait for organizations' claim locks is set and put back within the locking
    # statement: a caller's transaction keeps its own lock_timeout for whatever it does next.
    postgresql_only()
    seeder = Seeder(organization)
    ours = seeder.deliveries(seeder.destination("ours"), 2, waited=timedelta(minutes=1))
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '7s'")
        assert sorted(d.pk for d in delivery_service.claim_due_deliveries(4)) == sorted(ours)
        with connection.cursor() as cursor:
            cursor.execute("SHOW lock_timeout")
            assert cursor.fetchone()[0] == "7s"
