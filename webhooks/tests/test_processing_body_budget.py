"""The bodies that payload filters read in one processing batch come to at most
PROCESSING_BATCH_BODY_BYTES: a tenant's large bodies, each read for a hundred destinations, made the
batch every tenant shares take seconds. The events past the budget stay received, in their turn,
for the next batch; none is lost or processed twice."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from organizations.models import MonthlyUsage
from webhooks.models import Delivery, WebhookEvent
from webhooks.services import payload_filters as payload_filters_service
from webhooks.services import processing
from webhooks.services.destinations import destination_create
from webhooks.services.payload_filters import parse_payload_filter_lines

from .api_helpers import make_event
from .factories import make_source
from .test_poison_events import Fault

pytestmark = pytest.mark.django_db

URL = "http://127.0.0.1:9/hook"
PADDING = 10_000


@pytest.fixture(autouse=True)
def _no_dispatch_scheduling(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)


@pytest.fixture
def parsed(monkeypatch) -> list[bytes]:
    """The bodies payload filters parse, in order (each body read is parsed once)."""
    seen = []
    real = payload_filters_service.payload_document

    def counting(body):
        seen.append(bytes(body))
        return real(body)

    monkeypatch.setattr(payload_filters_service, "payload_document", counting)
    return seen


def _destination(organization, name, sources, lines="", **extra):
    destination, _ = destination_create(
        organization=organization,
        name=name,
        url=URL,
        sources=sources,
        payload_filters=parse_payload_filter_lines(lines),
        **extra,
    )
    return destination


def _body(live: int) -> bytes:
    return json.dumps({"data": {"live": live}, "pad": "x" * PADDING}).encode()


BODY_BYTES = len(_body(0))


def _events(source, count, start, step_ms=10):
    return [
        make_event(
            source,
            body=_body(number % 2),
            status=WebhookEvent.Status.RECEIVED,
            received_at=start + timedelta(milliseconds=step_ms * number),
        )
        for number in range(count)
    ]


def _processed(events) -> list[bool]:
    statuses = dict(WebhookEvent.objects.filter(pk__in=[event.pk for event in events]).values_list("pk", "status"))
    return [statuses[event.pk] == WebhookEvent.Status.PROCESSED for event in events]


def test_a_batch_stops_reading_bodies_at_the_budget_and_the_next_batches_take_the_rest_once(
    organization, settings, parsed
):
    settings.PROCESSING_BATCH_BODY_BYTES = 3 * BODY_BYTES
    source = make_source(organization)
    live = _destination(organization, "live", [source], "data.live == 1")
    everything = _destination(organization, "everything", [source])
    events = _events(source, 8, timezone.now() - timedelta(seconds=5))

    handled, read = [], []
    while count := processing.process_event_batch():
        handled.append(count)
        read.append(len(parsed))
        parsed.clear()
    assert handled == [3, 3, 2] and read == [3, 3, 2]
    # Nothing lost, nothing twice: every event processed, delivered and counted once.
    assert _processed(events) == [True] * 8
    assert Delivery.objects.filter(destination=everything).count() == 8
    assert set(Delivery.objects.filter(destination=live).values_list("event_id", flat=True)) == {
        event.pk for number, event in enumerate(events) if number % 2
    }
    assert MonthlyUsage.objects.get(organization=organization).events == 8


def test_the_oldest_are_taken_first_and_what_is_left_stays_received(organization, settings, parsed):
    settings.PROCESSING_BATCH_BODY_BYTES = 3 * BODY_BYTES
    source = make_source(organization)
    _destination(organization, "live", [source], "data.live == 1")
    events = _events(source, 5, timezone.now() - timedelta(seconds=5))
    assert processing.process_event_batch() == 3
    assert _processed(events) == [True, True, True, False, False]
    left = WebhookEvent.objects.filter(pk__in=[event.pk for event in events[3:]])
    # Left as they were: not set aside, nothing recorded against them.
    assert {(event.status, event.processing_failures, event.processing_retry_at) for event in left} == {
        (WebhookEvent.Status.RECEIVED, 0, None)
    }
    assert not Delivery.objects.filter(event__in=left).exists()


def test_a_body_larger_than_the_whole_budget_is_still_processed_one_a_batch(organization, settings):
    settings.PROCESSING_BATCH_BODY_BYTES = 100
    source = make_source(organization)
    _destination(organization, "live", [source], "data.live == 1")
    events = _events(source, 3, timezone.now() - timedelta(seconds=5))
    assert [processing.process_event_batch() for _ in range(4)] == [1, 1, 1, 0]
    assert _processed(events) == [True] * 3


def test_bodies_that_no_filter_reads_do_not_count(organization, settings, parsed):
    settings.PROCESSING_BATCH_BODY_BYTES = 100
    source = make_source(organization)
    _destination(organization, "everything", [source])
    # A filtered destination of the source that these events' type does not reach reads nothing either.
    _destination(organization, "charges", [source], "data.live == 1", event_types=["charge.*"])
    events = _events(source, 20, timezone.now() - timedelta(seconds=5))
    assert processing.process_event_batch() == 20
    assert parsed == []
    assert _processed(events) == [True] * 20


def test_events_whose_bodies_nothing_reads_go_with_a_first_event_past_the_budget(
    organization, other_organization, settings, parsed
):
    settings.PROCESSING_BATCH_BODY_BYTES = 100
    large = make_source(organization)
    _destination(organization, "live", [large], "data.live == 1")
    plain = make_source(other_organization)
    _destination(other_organization, "everything", [plain])
    start = timezone.now() - timedelta(seconds=5)
    first = _events(large, 1, start)
    behind = _events(plain, 3, start + timedelta(milliseconds=1))
    assert processing.process_event_batch() == 4
    assert len(parsed) == 1
    assert _processed(first + behind) == [True] * 4


def test_another_tenants_event_behind_the_budget_is_taken_by_the_next_batch_in_its_turn(
    organization, other_organization, settings
):
    settings.PROCESSING_BATCH_BODY_BYTES = 2 * BODY_BYTES
    large = make_source(organization)
    _destination(organization, "live", [large], "data.live == 1")
    small = make_source(other_organization)
    _destination(other_organization, "plain", [small])
    start = timezone.now() - timedelta(seconds=5)
    before, after = _events(large, 3, start), _events(large, 2, start + timedelta(seconds=1))
    ordinary = make_event(small, status=WebhookEvent.Status.RECEIVED, received_at=start + timedelta(milliseconds=500))
    assert processing.process_event_batch() == 2
    assert _processed(before) == [True, True, False] and _processed([ordinary]) == [False]
    # Next, in the order received: the last large body before it, the other tenant's event (whose
    # body nothing reads), and as many large bodies after it as fit.
    assert processing.process_event_batch() == 3
    assert _processed(before) == [True] * 3 and _processed([ordinary]) == [True]
    assert _processed(after) == [True, False]
    assert Delivery.objects.filter(event=ordinary).count() == 1
    assert processing.process_event_batch() == 1
    assert _processed(after) == [True, True]


def test_fresh_events_leave_half_the_budget_to_set_aside_ones_that_came_due(organization, settings, parsed):
    settings.PROCESSING_BATCH_BODY_BYTES = 4 * BODY_BYTES
    source = make_source(organization)
    _destination(organization, "live", [source], "data.live == 1")
    start = timezone.now() - timedelta(seconds=5)
    due = _events(source, 2, start - timedelta(minutes=5))
    WebhookEvent.objects.filter(pk__in=[event.pk for event in due]).update(
        processing_failures=1, processing_retry_at=timezone.now() - timedelta(seconds=1)
    )
    fresh = _events(source, 6, start)
    assert processing.process_event_batch() == 4
    assert len(parsed) == 4
    assert _processed(fresh) == [True, True, False, False, False, False] and _processed(due) == [True, True]


def test_after_a_failure_the_pass_one_by_one_keeps_to_what_the_failed_attempt_left_once_the_fault_is_found(
    organization, settings, monkeypatch, parsed
):
    settings.PROCESSING_BATCH_BODY_BYTES = 3 * BODY_BYTES
    source = make_source(organization)
    _destination(organization, "live", [source], "data.live == 1")
    events = _events(source, 6, timezone.now() - timedelta(seconds=5))
    bad = events[1]
    Fault(monkeypatch, bad.id)
    # The three that fit, tried together, read their bodies and fail; then one by one: the first
    # processed, the bad one set aside, and the third left to the next batch, the attempt having
    # read the whole budget. A pass that went on with a budget of its own read the three again.
    assert processing.process_event_batch() == 2
    assert len(parsed) == 3 + 2
    assert _processed(events) == [True, False, False, False, False, False]
    bad.refresh_from_db()
    assert bad.processing_failures == 1 and bad.processing_retry_at is not None
    assert {event.processing_failures for event in WebhookEvent.objects.filter(pk__in=[e.pk for e in events[2:]])} == {
        0
    }
    parsed.clear()
    assert processing.process_event_batch() == 3
    assert len(parsed) == 3
    assert processing.process_event_batch() == 1
    assert _processed(events) == [True, False, True, True, True, True]
    assert Delivery.objects.filter(event__in=events).count() == 2  # events 3 and 5 are live


def test_after_a_failure_the_pass_one_by_one_reaches_the_event_at_fault_whatever_the_attempt_read(
    organization, settings, monkeypatch, parsed
):
    # Stopping at the budget the failed attempt read would leave the bad event to fail the next batch
    # too, and each batch would then read the whole budget for one event of progress.
    settings.PROCESSING_BATCH_BODY_BYTES = 3 * BODY_BYTES
    source = make_source(organization)
    _destination(organization, "live", [source], "data.live == 1")
    events = _events(source, 4, timezone.now() - timedelta(seconds=5))
    bad = events[2]
    Fault(monkeypatch, bad.id)
    assert processing.process_event_batch() == 3
    assert len(parsed) == 3 + 3  # twice the budget: the most a failing batch reads
    assert _processed(events) == [True, True, False, False]
    bad.refresh_from_db()
    assert bad.processing_failures == 1
    assert processing.process_event_batch() == 1
    assert _processed(events) == [True, True, False, True]
