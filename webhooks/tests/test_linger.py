"""Idle processing and dispatcher tasks keep looking a little before they end, so a steady
stream of webhooks is served by running tasks; they still end, and hand over, on time."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import cache
from django.db import connections

from webhooks import tasks
from webhooks.models import Delivery, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import processing

from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

pytestmark = pytest.mark.django_db(transaction=True)


def ingest(client, source, event_id):
    body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
    response = post_stripe(client, source, body, STRIPE_SECRET)
    assert response.status_code == 200
    return response.json()["id"]


def closing_connections(function, **kwargs):
    """Run ``function`` in a pool thread and close that thread's database connection after."""

    def run():
        try:
            return function(**kwargs)
        finally:
            connections.close_all()

    return run


@pytest.fixture
def published(monkeypatch):
    """Celery messages the code would publish, counted instead of sent."""
    sent = []
    monkeypatch.setattr(tasks.process_events, "apply_async", lambda *a, **k: sent.append("process_events"))
    monkeypatch.setattr(tasks.dispatch_deliveries, "apply_async", lambda *a, **k: sent.append("dispatch"))
    return sent


class SteppingClock:
    """A module's ``time`` that runs with the real one, plus whatever step() adds to monotonic().

    For a lingering task whose linger the test has seen do its work: each step brings its end
    nearer, rather than the test waiting the rest of the linger out in real time."""

    def __init__(self):
        self.ahead = 0.0

    def step(self, seconds: float) -> None:
        self.ahead += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    def __getattr__(self, name):
        return getattr(time, name)


def empty_looks(monkeypatch, module, name, *, hurry_after_work=False) -> threading.Semaphore:
    """Released each time ``module.name`` (the task's look for work) finds nothing: three of them
    mean the task is idle and lingering (a task that does not linger looks twice at most: once, and
    once more after clearing its flag). A sleep would race a slow thread start on a busy host.

    With ``hurry_after_work``, once a look has found work, each later look that finds nothing with
    nothing else in hand moves the module's clock a second on: the linger after that work (the same
    long linger that gave the work a generous window to arrive in) ends after a few looks, rather
    than seconds later in real time. Nothing else of the task is changed."""
    found_nothing = threading.Semaphore(0)
    real = getattr(module, name)
    clock = SteppingClock()
    found_work = []
    if hurry_after_work:
        monkeypatch.setattr(module, "time", clock)

    def noted(*args, **kwargs):
        found = real(*args, **kwargs)
        if found:
            found_work.append(found)
        else:
            found_nothing.release()
            if found_work and not kwargs.get("keeping"):  # (the dispatcher: no send in flight)
                clock.step(1.0)
        return found

    monkeypatch.setattr(module, name, noted)
    return found_nothing


def wait_until_lingering(found_nothing: threading.Semaphore) -> None:
    for _ in range(3):
        assert found_nothing.acquire(timeout=10), "the task did not linger"


def test_idle_processing_task_picks_up_an_event_arriving_while_it_lingers(client, organization, published, monkeypatch):
    source = make_source(organization)
    found_nothing = empty_looks(monkeypatch, processing, "process_event_batch", hurry_after_work=True)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(closing_connections(processing.process_received_events, linger_seconds=5))
        wait_until_lingering(found_nothing)
        # While it lingers its flag is set, so the ingest below publishes no message.
        assert cache.get(processing.PROCESSING_SCHEDULED_KEY) is not None
        event_id = ingest(client, source, "evt_while_lingering")
        deadline = time.monotonic() + 10
        while WebhookEvent.objects.get(pk=event_id).status != WebhookEvent.Status.PROCESSED:
            assert time.monotonic() < deadline, "the lingering task did not pick the event up"
            time.sleep(0.05)
        assert running.result(15) == 1
    assert "process_events" not in published
    assert cache.get(processing.PROCESSING_SCHEDULED_KEY) is None  # cleared when it ended


def test_processing_task_ends_at_its_time_limit_and_hands_over_to_a_fresh_task(
    client, organization, published, settings
):
    settings.PROCESSING_MAX_SECONDS = 0
    source = make_source(organization)
    ingest(client, source, "evt_handover")
    deadline = time.monotonic() + 10
    while "process_events" not in published:  # the ingest's own nudge, sent after its commit
        assert time.monotonic() < deadline
        time.sleep(0.02)
    published.clear()

    assert processing.process_received_events(linger_seconds=5) == 1
    assert published == ["process_events"]  # a fresh task continues; what was queued runs first


def test_idle_dispatcher_sends_a_delivery_that_falls_due_while_it_lingers(
    organization, httpserver, published, monkeypatch
):
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    arrived = threading.Event()
    found_nothing = empty_looks(
        monkeypatch, delivery_service, "_claim_unless_the_database_is_down", hurry_after_work=True
    )
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            closing_connections(delivery_service.dispatch_due_deliveries, threads=2, linger_seconds=5)
        )
        wait_until_lingering(found_nothing)
        event = WebhookEvent.objects.create(
            organization=organization, source=source, provider_event_id="evt_due", event_type="invoice.paid", body=b"{}"
        )
        delivery = Delivery.objects.create(organization=organization, event=event, destination=destination)
        deadline = time.monotonic() + 10
        while not arrived.is_set():
            assert time.monotonic() < deadline, "the lingering dispatcher did not send the delivery"
            if httpserver.log:
                arrived.set()
            time.sleep(0.05)
        assert running.result(15) == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SUCCEEDED
    assert published == []  # no message was needed


def test_an_idle_dispatcher_lingers_for_its_setting_then_ends(
    organization, httpserver, published, settings, monkeypatch
):
    # DISPATCHER_LINGER_SECONDS, with no argument: after looks that found nothing, a delivery that
    # falls due is still sent by the same run, which then ends once idle again.
    settings.DISPATCHER_LINGER_SECONDS = 2
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    found_nothing = empty_looks(monkeypatch, delivery_service, "_claim_unless_the_database_is_down")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(closing_connections(delivery_service.dispatch_due_deliveries, threads=2))
        wait_until_lingering(found_nothing)
        event = WebhookEvent.objects.create(
            organization=organization,
            source=source,
            provider_event_id="evt_late",
            event_type="invoice.paid",
            body=b"{}",
        )
        delivery = Delivery.objects.create(organization=organization, event=event, destination=destination)
        assert running.result(15) == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SUCCEEDED
    assert len(httpserver.log) == 1
    assert published == []


@pytest.mark.django_db(transaction=True)
def test_one_processing_loop_at_a_time(organization, settings, monkeypatch):
    """A second process_events message ends at once while a loop holds the lease, and does the
    work when the holder lets go within the wait; a dead holder's lease expires."""
    settings.PROCESSING_LINGER_SECONDS = 0
    source = make_source(organization)
    WebhookEvent.objects.create(organization=organization, source=source, body=b"{}", provider_event_id="evt_1")
    cache.set(processing.PROCESSING_LEASE_KEY, "another loop", timeout=30)
    try:
        # Given up after its wait, whatever that wait's length: a short one spares the 2 s.
        with monkeypatch.context() as patched:
            patched.setattr(processing, "PROCESSING_LEASE_WAIT_SECONDS", 0.2)
            assert processing.process_received_events() == 0  # the running loop finds it
        # It gave up within its wait: the other loop's lease (30 s) is still there, untouched.
        assert cache.get(processing.PROCESSING_LEASE_KEY) == "another loop"
        assert WebhookEvent.objects.get().status == WebhookEvent.Status.RECEIVED

        # A loop that is ending lets go within the wait: the new message then does the work.
        release = threading.Timer(0.3, lambda: cache.delete(processing.PROCESSING_LEASE_KEY))
        release.start()
        assert processing.process_received_events() == 1
        release.join()
    finally:
        cache.delete(processing.PROCESSING_LEASE_KEY)
    assert WebhookEvent.objects.get().status == WebhookEvent.Status.PROCESSED
    assert cache.get(processing.PROCESSING_LEASE_KEY) is None  # released when done

    # A holder that died without letting go: its lease expires and processing carries on.
    WebhookEvent.objects.create(organization=organization, source=source, body=b"{}", provider_event_id="evt_2")
    cache.set(processing.PROCESSING_LEASE_KEY, "a dead loop", timeout=1)
    assert processing.process_received_events() == 1


def test_processing_goes_on_without_the_lease_when_the_cache_is_down(organization, settings, monkeypatch):
    settings.PROCESSING_LINGER_SECONDS = 0

    def cache_down(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(processing.cache, "add", cache_down)
    monkeypatch.setattr(processing, "wait_before_last_look", lambda seconds: None)
    source = make_source(organization)
    WebhookEvent.objects.create(organization=organization, source=source, body=b"{}", provider_event_id="evt_1")
    assert processing.process_received_events() == 1
