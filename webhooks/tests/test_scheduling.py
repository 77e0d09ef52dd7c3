"""Ingest trusts a recent sighting of the processing flag instead of asking Redis per commit,
and a processing task waits those sightings out before its last look, so nothing is left behind."""

import json
import os
import threading
import time

import pytest
from django.core.cache import cache
from django.db import connections

from webhooks import tasks
from webhooks.models import WebhookEvent
from webhooks.services import processing, scheduling

from .factories import STRIPE_SECRET, make_source
from .signing import post_stripe

pytestmark = pytest.mark.django_db(transaction=True)

TRUST_SECONDS = 0.4


@pytest.fixture
def published(monkeypatch, settings):
    settings.PROCESSING_FLAG_TRUST_SECONDS = TRUST_SECONDS
    scheduling.forget_seen_flags()
    cache.delete(processing.PROCESSING_SCHEDULED_KEY)
    sent = []
    monkeypatch.setattr(tasks.process_events, "apply_async", lambda *a, **k: sent.append("process_events"))
    yield sent
    scheduling.forget_seen_flags()


def ingest(client, source, event_id):
    body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
    response = post_stripe(client, source, body, STRIPE_SECRET)
    assert response.status_code == 200, response.content
    return response.json()["id"]


@pytest.fixture
def ingest_and_wait_for_its_nudge(client, monkeypatch):
    """Ingest, then wait until the writer thread has made its scheduling call (it runs after
    the request was answered), so that what was or was not published can be checked."""
    calls = []
    real = processing.schedule_event_processing

    def counted(**kwargs):
        real(**kwargs)
        calls.append(kwargs)

    monkeypatch.setattr(processing, "schedule_event_processing", counted)

    def run(source, event_id):
        before = len(calls)
        ingest(client, source, event_id)
        deadline = time.monotonic() + 10
        while len(calls) == before:
            assert time.monotonic() < deadline, "the ingest made no scheduling call"
            time.sleep(0.005)
        assert calls[-1] == {"from_ingest": True}

    return run


def test_ingest_trusts_a_flag_it_saw_for_a_while_then_asks_again(
    organization, published, ingest_and_wait_for_its_nudge
):
    source = make_source(organization)
    ingest_and_wait_for_its_nudge(source, "evt_first")
    assert published == ["process_events"]

    # The task cleared its flag: within the trust window ingest does not ask (its task still
    # has its last look ahead of it), after it it asks and publishes again.
    cache.delete(processing.PROCESSING_SCHEDULED_KEY)
    ingest_and_wait_for_its_nudge(source, "evt_trusted")
    assert published == ["process_events"]
    assert cache.get(processing.PROCESSING_SCHEDULED_KEY) is None

    time.sleep(TRUST_SECONDS + 0.05)
    ingest_and_wait_for_its_nudge(source, "evt_after_window")
    assert published == ["process_events", "process_events"]
    assert cache.get(processing.PROCESSING_SCHEDULED_KEY) is not None


def test_workers_never_trust_a_sighting(published):
    processing.schedule_event_processing(from_ingest=True)
    cache.delete(processing.PROCESSING_SCHEDULED_KEY)
    processing.schedule_event_processing()  # a task handing over must really publish
    assert published == ["process_events", "process_events"]


def test_a_task_waits_out_trusted_sightings_before_its_last_look(
    client, organization, published, monkeypatch, settings
):
    """The race the wait closes: the task clears its flag and, while an ingest process still
    trusts its old sighting, an event is committed without a message. The task's last look,
    taken only after every such sighting expired, must find that event."""
    # A longer trust than the module's: the late ingest (a fifth of a second after the clear) must
    # commit while the sighting is trusted and before the last look, however loaded the machine.
    settings.PROCESSING_FLAG_TRUST_SECONDS = 3.0
    source = make_source(organization)
    processing.schedule_event_processing(from_ingest=True)  # this process saw the flag set
    published.clear()
    late_ingest_done = threading.Event()

    def ingest_shortly_after_the_clear():
        try:
            time.sleep(0.2)
            ingest(client, source, "evt_during_the_wait")
        finally:
            connections.close_all()
            late_ingest_done.set()

    real_clear_flag = processing.clear_flag
    clears = []

    def clear_flag_then_ingest(key):
        real_clear_flag(key)
        clears.append(key)
        if len(clears) == 1:
            threading.Thread(target=ingest_shortly_after_the_clear).start()
        elif late_ingest_done.is_set():
            # Having found the event, the task looks again, finds nothing, clears its flag once more
            # and would wait out the 3 s trust again: the late ingest is over (its event committed
            # before this clear, so found by this cycle's last look whatever its wait), and nothing
            # else here trusts a sighting, so that second wait is spared.
            settings.PROCESSING_FLAG_TRUST_SECONDS = 0

    waits = []

    def wait_out_the_late_ingest_s_sighting(seconds):
        # The wait lets every trusted sighting of the cleared flag expire; the one process here
        # trusting one is the late ingest, whose trust ends with it: the wait ends then (or after
        # the trust, as the real wait does), instead of sleeping out the rest of the 3 s.
        waits.append(seconds)
        if seconds > 0:
            late_ingest_done.wait(seconds * 1.05 + 0.001)

    monkeypatch.setattr(processing, "clear_flag", clear_flag_then_ingest)
    monkeypatch.setattr(processing, "wait_before_last_look", wait_out_the_late_ingest_s_sighting)
    # The one event it processes is the one committed while it waited (none was there before).
    assert processing.process_received_events(linger_seconds=0) == 1
    assert waits[0] == 3.0  # the first last look was to wait out the whole trust
    assert late_ingest_done.wait(10)
    assert published == []  # the ingest trusted its sighting: no message was needed
    assert WebhookEvent.objects.get(provider_event_id="evt_during_the_wait").status == WebhookEvent.Status.PROCESSED


def test_a_broker_outage_is_warned_about_once_a_while_not_per_webhook(monkeypatch, caplog):
    def broker_down(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to localhost:6379. Connection refused.")

    monkeypatch.setattr(tasks.process_events, "apply_async", broker_down)
    monkeypatch.setattr(scheduling, "_failure_warned_at", {})
    clock = [1000.0]
    monkeypatch.setattr(scheduling.time, "monotonic", lambda: clock[0])
    with caplog.at_level("WARNING", logger="webhooks.services.scheduling"):
        for _ in range(50):  # a burst of webhooks during the outage
            cache.delete(processing.PROCESSING_SCHEDULED_KEY)
            scheduling.schedule_once(processing.PROCESSING_SCHEDULED_KEY, 5, tasks.process_events)
        clock[0] += scheduling.FAILURE_WARNING_SECONDS
        scheduling.schedule_once("another-flag", 5, tasks.process_events)
    warnings = [r.getMessage() for r in caplog.records if r.name == "webhooks.services.scheduling"]
    assert len(warnings) == 2 and all("could not schedule" in w and "Connection refused" in w for w in warnings)


def test_the_worker_stopping_flag_takes_no_lock_and_reaches_the_processes_forked_after_it(monkeypatch):
    # The main process sets it in its signal handler (worker_shutting_down). A flag with a lock (a
    # multiprocessing.Event) hung the worker when a cold shutdown's signal came while the warm one's
    # set() held that lock; plain shared bytes have nothing to wait for.
    monkeypatch.setattr(scheduling, "_worker_stopping", None)
    scheduling.prepare_for_worker_shutdown()
    flag = scheduling._worker_stopping
    assert not hasattr(flag, "get_lock") and not hasattr(flag, "_cond") and not hasattr(flag, "_flag")

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # a pool process, forked after the flag was made
        os.close(read_end)
        deadline = time.monotonic() + 60
        while not scheduling.worker_is_stopping() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(write_end, b"1" if scheduling.worker_is_stopping() else b"0")
        os._exit(0)
    os.close(write_end)
    try:
        assert not scheduling.worker_is_stopping()
        scheduling.note_worker_stopping()
        assert scheduling.worker_is_stopping()
        assert os.read(read_end, 1) == b"1"
    finally:
        os.close(read_end)
        os.waitpid(child, 0)


def test_a_publish_the_broker_refused_leaves_no_flag_behind(monkeypatch):
    # Redis full at its plan's client cap: the flag was set, the message never queued. Left set,
    # every caller and the sweeper skipped publishing for the flag's whole TTL once Redis took
    # clients again (15 s for a dispatcher), with deliveries waiting.
    scheduling.forget_seen_flags()
    cache.delete(processing.PROCESSING_SCHEDULED_KEY)
    sent = []

    def broker_full(*args, **kwargs):
        raise ConnectionError("max number of clients reached")

    monkeypatch.setattr(tasks.process_events, "apply_async", broker_full)
    assert not scheduling.schedule_once(processing.PROCESSING_SCHEDULED_KEY, 60, tasks.process_events)

    # Kept a second (a burst of callers does not each try the refusing broker), not the 60 s asked.
    assert 0 < cache.ttl(processing.PROCESSING_SCHEDULED_KEY) <= 1
    cache.delete(processing.PROCESSING_SCHEDULED_KEY)  # that second over
    monkeypatch.setattr(tasks.process_events, "apply_async", lambda *a, **k: sent.append("process_events"))
    assert scheduling.schedule_once(processing.PROCESSING_SCHEDULED_KEY, 60, tasks.process_events)
    assert sent == ["process_events"]
    cache.delete(processing.PROCESSING_SCHEDULED_KEY)
