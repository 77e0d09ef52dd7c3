"""The deliveries one processing batch creates come to at most PROCESSING_BATCH_DELIVERIES: one
tenant's hundred destinations taking a hundred events made 8,400 deliveries in the batch every tenant
shares (0.65 s of CPU). The events past the budget stay received, in their turn, for the next batch;
none is lost or processed twice, and each tenant's events are taken in the order received."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from organizations.models import MonthlyUsage
from webhooks.models import Delivery, WebhookEvent
from webhooks.services import processing

from . import test_processing_body_budget as body_budget
from .api_helpers import make_event
from .factories import make_source
from .test_poison_events import Fault
from .test_processing_body_budget import _destination, _processed

pytestmark = pytest.mark.django_db


# The body budget's fixtures, the same here: no dispatch is scheduled, and ``parsed`` lists the
# bodies payload filters parse, in order.
_no_dispatch_scheduling = body_budget._no_dispatch_scheduling
parsed = body_budget.parsed


def _fan_out_to(organization, source, count, lines=""):
    return [_destination(organization, f"app {number}", [source], lines) for number in range(count)]


def _received(source, at, live=1):
    return make_event(
        source,
        body=json.dumps({"data": {"live": live}}).encode(),
        status=WebhookEvent.Status.RECEIVED,
        received_at=at,
    )


def _deliveries_of(events) -> list[int]:
    return [Delivery.objects.filter(event=event).count() for event in events]


def _batches(**budget) -> tuple[list[int], list[int]]:
    """process_event_batch() until nothing is left: events and deliveries of each batch."""
    handled, created = [], []
    while True:
        before = Delivery.objects.count()
        count = processing.process_event_batch(**budget)
        if not count:
            return handled, created
        handled.append(count)
        created.append(Delivery.objects.count() - before)


def test_another_tenants_event_behind_a_large_fan_out_is_taken_by_the_next_batch_in_its_turn(
    organization, other_organization, settings, parsed
):
    settings.PROCESSING_BATCH_DELIVERIES = 8
    large, small = make_source(organization), make_source(other_organization)
    _fan_out_to(organization, large, 5)
    _fan_out_to(other_organization, small, 1)
    start = timezone.now() - timedelta(seconds=5)
    first, second = _received(large, start), _received(large, start + timedelta(milliseconds=1))
    ordinary = _received(small, start + timedelta(milliseconds=2))
    third = _received(large, start + timedelta(milliseconds=3))

    assert processing.process_event_batch() == 1
    assert _processed([first, second, ordinary, third]) == [True, False, False, False]
    # The events past the budget are left as they were: not set aside, nothing created for them.
    left = WebhookEvent.objects.filter(pk__in=[second.pk, ordinary.pk, third.pk])
    assert {(event.status, event.processing_failures, event.processing_retry_at) for event in left} == {
        (WebhookEvent.Status.RECEIVED, 0, None)
    }
    assert _deliveries_of([first, second, ordinary, third]) == [5, 0, 0, 0]
    # Next, in the order received: the second large fan-out and the other tenant's event, not the third.
    assert processing.process_event_batch() == 2
    assert _processed([second, ordinary, third]) == [True, True, False]
    assert processing.process_event_batch() == 1
    assert processing.process_event_batch() == 0
    # Nothing lost, nothing twice.
    assert _deliveries_of([first, second, ordinary, third]) == [5, 5, 1, 5]
    assert MonthlyUsage.objects.get(organization=organization).events == 3
    assert MonthlyUsage.objects.get(organization=other_organization).events == 1
    assert parsed == []  # no payload filter: no body read


def test_a_hundred_destinations_taking_every_event_are_cut_at_the_budget(organization, settings):
    settings.PROCESSING_BATCH_DELIVERIES = 2000
    source = make_source(organization)
    _fan_out_to(organization, source, 100)
    start = timezone.now() - timedelta(seconds=5)
    events = [_received(source, start + timedelta(milliseconds=number)) for number in range(50)]
    assert _batches() == ([20, 20, 10], [2000, 2000, 1000])
    assert _processed(events) == [True] * 50
    assert MonthlyUsage.objects.get(organization=organization).events == 50


def test_an_event_whose_fan_out_alone_passes_the_budget_is_still_processed_one_a_batch(organization, settings):
    source = make_source(organization)
    _fan_out_to(organization, source, 5)
    start = timezone.now() - timedelta(seconds=5)
    events = [_received(source, start + timedelta(milliseconds=number)) for number in range(3)]
    assert _batches(delivery_budget=3) == ([1, 1, 1], [5, 5, 5])
    assert _processed(events) == [True] * 3


def test_the_budget_counts_deliveries_made_not_destinations_looked_at_and_parses_no_body_past_it(
    organization, other_organization, settings, parsed
):
    settings.PROCESSING_BATCH_DELIVERIES = 8
    source, plain = make_source(organization), make_source(other_organization)
    _fan_out_to(organization, source, 4, "data.live == 1")
    start = timezone.now() - timedelta(seconds=5)
    # Events the filters refuse create nothing and cost the budget nothing, nor does an event of a
    # source with no destination, even after an event that filled it.
    lives = [1, 0, 0, 1, 0, 1, 1]
    events = [_received(source, start + timedelta(milliseconds=number), live) for number, live in enumerate(lives)]
    nowhere = _received(plain, start + timedelta(milliseconds=4, microseconds=500))
    assert processing.process_event_batch() == 6
    assert _processed(events) == [True] * 5 + [False] * 2 and _processed([nowhere]) == [True]
    # Parsed: the five taken, and the sixth that would have passed the budget, not the seventh.
    assert len(parsed) == 6
    assert _deliveries_of(events) == [4, 0, 0, 4, 0, 0, 0]
    parsed.clear()
    assert processing.process_event_batch() == 2
    assert len(parsed) == 2 and _deliveries_of(events)[5:] == [4, 4]


def test_fresh_events_leave_half_the_budget_to_set_aside_ones_that_came_due(organization, settings):
    settings.PROCESSING_BATCH_DELIVERIES = 8
    source = make_source(organization)
    _fan_out_to(organization, source, 2)
    start = timezone.now() - timedelta(seconds=5)
    due = [_received(source, start - timedelta(minutes=5, milliseconds=-number)) for number in range(3)]
    for number, event in enumerate(due):  # due in this order
        WebhookEvent.objects.filter(pk=event.pk).update(
            processing_failures=1, processing_retry_at=timezone.now() - timedelta(seconds=10 - number)
        )
    fresh = [_received(source, start + timedelta(milliseconds=number)) for number in range(6)]
    assert processing.process_event_batch() == 4
    assert _processed(fresh) == [True, True] + [False] * 4 and _processed(due) == [True, True, False]


def test_after_a_failure_the_pass_one_by_one_keeps_to_what_the_failed_attempt_left_once_the_fault_is_found(
    organization, settings, monkeypatch
):
    settings.PROCESSING_BATCH_DELIVERIES = 10
    source = make_source(organization)
    _fan_out_to(organization, source, 5)
    start = timezone.now() - timedelta(seconds=5)
    events = [_received(source, start + timedelta(milliseconds=number)) for number in range(4)]
    Fault(monkeypatch, events[0].id)
    # The two that fit (10 deliveries) fail together; alone, the first fails and is set aside, and the
    # budget the attempt spent leaves the second for the next batch, which takes it with the third.
    assert processing.process_event_batch() == 1
    assert _processed(events) == [False] * 4
    events[0].refresh_from_db()
    assert events[0].processing_failures == 1 and events[0].processing_retry_at is not None
    assert processing.process_event_batch() == 2
    assert processing.process_event_batch() == 1
    assert _processed(events) == [False, True, True, True]
    assert _deliveries_of(events) == [0, 5, 5, 5]
