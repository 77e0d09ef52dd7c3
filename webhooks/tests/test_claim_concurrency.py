"""Dispatchers claiming at the same time, each on its own connection (PostgreSQL).

The claim locks the destinations and counts the sends in flight after the lock, so that whoever
held a destination before has committed its claim: together, concurrent claims never take one
delivery twice, never exceed a destination's max_concurrency or its rate limit for the second,
and never take the deliveries of a paused or inactive destination, a suspended organization or
one being deleted.
"""

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
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

    def slow_lock(ids):
        time.sleep(0.005)  # (were the sends in flight read before the lock, a claim would commit here)
        locked = locked_destinations(ids)
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
