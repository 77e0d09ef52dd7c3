"""Fault injection with real processes: nothing acknowledged is lost, nothing is sent twice by us
except what a killed worker had in flight. Each test is bounded in time and stops what it started."""

import os
import signal
import threading
import time
import uuid

import pytest
import redis

from webhooks.models import Delivery, WebhookEvent
from webhooks.services.claim_owners import MARK_KEY_PREFIX, MARK_TTL_SECONDS
from webhooks.services.delivery import DISPATCH_FLAG_KEY, DISPATCH_FLAG_TTL

from .factories import STRIPE_SECRET, make_destination, make_source
from .processes import CountingReceiver, RedisServer, Stack, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver(request):
    receiver = CountingReceiver(delay=getattr(request, "param", 0.0))
    yield receiver
    receiver.close()


@pytest.fixture
def stack(redis_server):
    stack = Stack(f"redis://127.0.0.1:{redis_server.port}/0", DELIVERY_THREADS="4")
    yield stack
    stack.stop_all()


def all_delivered(event_ids, receiver):
    counts = receiver.snapshot()
    return all(counts[event_id] >= 1 for event_id in event_ids)


def test_redis_lost_while_webhooks_arrive_then_back_empty(organization, receiver, redis_server, stack):
    source = make_source(organization)
    make_destination(organization, receiver.url, sources=[source])
    stack.start_together("web", "worker", "beat")

    acknowledged = []
    for n in range(60):
        if n == 20:
            redis_server.stop()  # broker and cache gone, with everything queued in them
        if n == 40:
            redis_server.start()  # back, and empty
        event_id = f"evt_redis_{n}_{uuid.uuid4().hex[:6]}"
        status = stack.post_stripe(source.ingest_token, event_id, STRIPE_SECRET)
        assert status == 200, f"webhook {n} answered {status}"
        acknowledged.append(event_id)
        time.sleep(0.02)

    stored = dict(WebhookEvent.objects.values_list("id", "provider_event_id"))
    assert sorted(stored.values()) == sorted(acknowledged)  # acknowledged means committed
    assert wait_until(lambda: all_delivered(map(str, stored), receiver), timeout=180), (
        f"undelivered: {[p for i, p in stored.items() if not receiver.snapshot()[str(i)]]}"
    )
    # A worker that exited on the lost connection (and was restarted) leaves what it held in
    # flight; the sweeper gives it back and it is sent again.
    assert wait_until(lambda: Delivery.objects.exclude(status="succeeded").count() == 0, timeout=60)
    counts = receiver.snapshot()
    if stack.restarts.get("worker"):
        assert max(counts.values()) <= 2  # what the exited worker held may go again, once
    else:
        assert max(counts.values()) == 1  # no worker died: nothing was sent twice


def expire_marks_of_the_dead(redis_server, owners) -> None:
    """What MARK_TTL_SECONDS after a dispatcher's death does to its claims' marks, done now.

    Each mark must be there and expire by itself within MARK_TTL_SECONDS (checked): waited out,
    that was 15 to 20 s of the test doing nothing. The sweeper then judges the claims as it would."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        for owner in owners:
            keys = list(client.scan_iter(match=f"*{MARK_KEY_PREFIX}{owner}"))
            assert len(keys) == 1, (owner, keys)
            assert 0 < client.pttl(keys[0]) <= MARK_TTL_SECONDS * 1000, (owner, client.pttl(keys[0]))
            client.delete(keys[0])
    finally:
        client.close()


def expire_flags_of_the_dead(redis_server) -> None:
    """What DISPATCH_FLAG_TTL after the death of the only worker's dispatchers does to their flags
    ("a dispatcher runs"), done now.

    Kept set, each flag has every schedule_dispatch (the sweeper's, once it gave the dead claims
    back) skip publishing until it expires by itself within DISPATCH_FLAG_TTL (checked): waited
    out, that was up to 15 s of the test doing nothing."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        keys = list(client.scan_iter(match=f"*{DISPATCH_FLAG_KEY}*"))
        assert keys, "the killed worker's dispatcher left no flag"
        for key in keys:
            assert 0 < client.pttl(key) <= DISPATCH_FLAG_TTL * 1000, (key, client.pttl(key))
            client.delete(key)
    finally:
        client.close()


@pytest.mark.parametrize("receiver", [0.3], indirect=True)
def test_worker_killed_mid_delivery(organization, receiver, redis_server, stack):
    source = make_source(organization)
    make_destination(organization, receiver.url, sources=[source])
    stack.start_together("web", "worker", "beat")

    for n in range(30):
        assert stack.post_stripe(source.ingest_token, f"evt_kill_{n}", STRIPE_SECRET) == 200
    # Let the worker get some requests in flight (the receiver takes 0.3 s each), then kill it hard.
    assert wait_until(lambda: sum(receiver.snapshot().values()) >= 4, timeout=60)
    stack.kill("worker")
    in_flight_at_kill = Delivery.objects.filter(status="in_flight").count()
    assert in_flight_at_kill >= 1, "the kill should land while deliveries are in flight"
    owners = set(Delivery.objects.filter(status="in_flight").values_list("claimed_by", flat=True))
    assert None not in owners
    expire_marks_of_the_dead(redis_server, owners)
    expire_flags_of_the_dead(redis_server)
    stack.start("worker")

    event_ids = [str(i) for i in WebhookEvent.objects.values_list("id", flat=True)]
    assert len(event_ids) == 30
    assert wait_until(lambda: all_delivered(event_ids, receiver), timeout=180)
    counts = receiver.snapshot()
    twice = [event_id for event_id, count in counts.items() if count > 1]
    assert max(counts.values()) <= 2  # at most once more...
    assert len(twice) <= max(in_flight_at_kill, 4)  # ...and only for what the dead worker held
    assert wait_until(lambda: Delivery.objects.exclude(status="succeeded").count() == 0, timeout=60)


def test_a_worker_told_to_stop_winds_up_in_seconds_while_webhooks_keep_coming(organization, receiver, stack):
    # Platforms give a stopping process a grace period (often 30 s) before SIGKILL: a dispatcher
    # that went on claiming for its full DISPATCHER_MAX_SECONDS under a steady stream would be
    # killed mid-send, and what it was sending would go twice.
    source = make_source(organization)
    make_destination(organization, receiver.url, sources=[source])
    stack.start_together("web", "worker", "beat")
    stop_posting, answers = threading.Event(), []

    def post_steadily():
        n = 0
        while not stop_posting.is_set():
            answers.append(stack.post_stripe(source.ingest_token, f"evt_term_{n}", STRIPE_SECRET))
            n += 1
            time.sleep(0.02)

    poster = threading.Thread(target=post_steadily)
    poster.start()
    try:
        assert wait_until(lambda: len(receiver.snapshot()) >= 20, timeout=60)
        worker = stack.processes["worker"]
        told = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)  # the main process only: a warm shutdown
        worker.wait(60)
        took = time.monotonic() - told
        # The stack starts a new worker, as the platform would; webhooks keep coming until it has.
        assert wait_until(lambda: stack.processes.get("worker") not in (None, worker), timeout=60, interval=0.05)
    finally:
        stop_posting.set()
        poster.join(30)

    assert took < 10, f"the worker took {took:.1f} s to stop"
    assert set(answers) == {200}
    event_ids = [str(i) for i in WebhookEvent.objects.values_list("id", flat=True)]
    assert len(event_ids) == len(answers)
    assert wait_until(lambda: all_delivered(event_ids, receiver), timeout=120)
    assert max(receiver.snapshot().values()) == 1  # the stopping worker finished what it was sending


def beat_health():
    from webhooks.services.platform_health import processing_health

    health = processing_health()
    return health, [reason for reason in health.reasons if "beat" in reason]


def test_beat_with_its_broker_down_shows_its_sends_failing_then_recovering(redis_server, stack):
    """A real beat on a real Redis (its broker) that stops, then comes back. django-celery-beat
    writes a task's last_run_at whether or not the send reached the broker: the health check
    read "beat last sent a task: 2 s ago" through the whole outage."""
    stack.start("beat")  # sends the sweep every second (Stack's SWEEP_INTERVAL_SECONDS)
    # Until its first send is marked and its health reads fine: the send's mark can come first, and
    # the health read then still said "beat has never sent a periodic task" (a failure seen once).
    assert wait_until(lambda: beat_health()[0].beat_sent_at is not None and beat_health()[1] == [], timeout=60), (
        f"beat never sent: {beat_health()}"
    )
    health, reasons = beat_health()
    assert not health.beat_sends_fail and reasons == []

    redis_server.stop()
    stopped_at = time.monotonic()
    assert wait_until(lambda: beat_health()[0].beat_sends_fail, timeout=30), (
        f"30 s with the broker down, and beat's sends still look fine: {beat_health()}"
    )
    failing, _ = beat_health()
    sent_before_the_outage = failing.beat_sent_at
    # Beat keeps trying, in vain: its mark stays where the broker went away (a newer try awaited,
    # rather than a fixed few seconds of them).
    assert wait_until(lambda: beat_health()[0].beat_last_run_at > failing.beat_last_run_at, timeout=60, interval=0.1), (
        f"beat stopped trying: {beat_health()}"
    )
    health, reasons = beat_health()
    assert health.beat_sent_at == sent_before_the_outage and health.beat_sends_fail
    assert health.age(health.beat_sent_at) >= time.monotonic() - stopped_at - 1
    assert len(reasons) == 1 and reasons[0].startswith("beat's sends do not reach the broker: its newest try")
    assert health.verdict != "ok"

    redis_server.start()  # the same port: beat reconnects
    assert wait_until(lambda: not beat_health()[0].beat_sends_fail, timeout=60), (
        f"the broker is back, and beat's sends still fail: {beat_health()}"
    )
    health, reasons = beat_health()
    assert health.beat_sent_at > sent_before_the_outage and reasons == []
