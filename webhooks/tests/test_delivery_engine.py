"""The dispatcher, retry policy, fairness, circuit breaker, and the operations on failures."""

import contextlib
import logging
import socket
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.core import mail
from django.core.cache import cache
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone
from werkzeug import Response

from organizations.models import AuditLog, MonthlyUsage, Organization
from webhooks.models import BulkRetry, Delivery, DeliveryAttempt, Destination, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import operations, processing
from webhooks.services.lifecycle import purge_expired_events
from webhooks.services.outbound import OutboundResponse, parse_retry_after
from webhooks.tests.delivering import deliver_now

from .factories import STRIPE_SECRET, make_destination, make_source
from .processes import PATIENCE_SECONDS, free_port
from .signing import post_stripe

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def dispatches(monkeypatch):
    scheduled = []
    for module in (processing, delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: scheduled.append(1))
    return scheduled


def ingest_many(client, source, count, prefix="evt"):
    for n in range(count):
        body = f'{{"id":"{prefix}_{n}","object":"event","type":"invoice.paid"}}'
        response = post_stripe(client, source, body, STRIPE_SECRET)
        assert response.status_code == 200
    processing.process_received_events()


def response(status, retry_after=None):
    return OutboundResponse(status=status, body="", duration_ms=1, retry_after=retry_after)


# --- retry policy -------------------------------------------------------------


@pytest.mark.parametrize(
    "status, expected",
    [
        (200, "succeeded"),
        (204, "succeeded"),
        (500, "pending"),
        (503, "pending"),
        (408, "pending"),
        (409, "pending"),
        (425, "pending"),
        (429, "pending"),
        (None, "pending"),
        (400, "dead"),
        (401, "dead"),
        (404, "dead"),
        (410, "dead"),
        (301, "dead"),
    ],
)
def test_retry_policy(organization, status, expected):
    destination = Destination(organization=organization, retry_client_errors=False)
    assert (
        delivery_service.decide_outcome(response(status), attempt_count=1, destination=destination).status == expected
    )


def test_client_errors_retry_when_the_destination_opts_in(organization):
    destination = Destination(organization=organization, retry_client_errors=True)
    assert delivery_service.decide_outcome(response(404), attempt_count=1, destination=destination).status == "pending"


def test_retry_after_is_honoured_within_the_cap(organization, settings):
    settings.RETRY_AFTER_MAX_SECONDS = 600
    settings.DELIVERY_RETRY_SCHEDULE = [10, 20]
    destination = Destination(organization=organization)
    assert delivery_service.decide_outcome(response(429, 30), attempt_count=1, destination=destination).delay == 30
    assert delivery_service.decide_outcome(response(503, 99999), attempt_count=1, destination=destination).delay == 600


def test_a_short_retry_after_never_brings_the_next_try_sooner_than_the_schedule(organization, settings):
    # "Retry-After: 1" from a receiver in maintenance must not use up every retry in seconds.
    settings.DELIVERY_RETRY_SCHEDULE = [60, 3600]
    destination = Destination(organization=organization)
    first = delivery_service.decide_outcome(response(503, 1), attempt_count=1, destination=destination)
    assert first.status == "pending" and 54 <= first.delay <= 66
    second = delivery_service.decide_outcome(response(503, 1), attempt_count=2, destination=destination)
    assert 3240 <= second.delay <= 3960
    assert parse_retry_after("120") == 120
    assert 55 < parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412420) < 65
    assert parse_retry_after("soon") is None


# --- dispatcher ---------------------------------------------------------------


def test_dispatcher_delivers_everything_due_and_stops(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/a"), sources=[source])
    httpserver.expect_request("/a").respond_with_data("ok")
    ingest_many(client, source, 25)
    assert delivery_service.dispatch_due_deliveries(threads=4) == 25
    assert Delivery.objects.filter(status="succeeded").count() == 25
    assert len(httpserver.log) == 25


def test_a_running_dispatcher_sets_its_flag_once_per_refresh_interval_not_per_turn(
    client, organization, httpserver, monkeypatch
):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/a"), sources=[source])
    httpserver.expect_request("/a").respond_with_data("ok")
    ingest_many(client, source, 12)
    # An interval no run reaches: the flag is set once, however many turns the loop takes.
    monkeypatch.setattr(delivery_service, "DISPATCH_FLAG_REFRESH_SECONDS", 3600)
    flag_sets = []
    set_flag = delivery_service.set_flag
    monkeypatch.setattr(delivery_service, "set_flag", lambda key, ttl: (flag_sets.append(key), set_flag(key, ttl)))
    flag_seen_while_sending = []
    send = delivery_service.send

    def sending(delivery):
        flag_seen_while_sending.append(cache.get(delivery_service.DISPATCH_FLAG_KEY) is not None)
        return send(delivery)

    monkeypatch.setattr(delivery_service, "send", sending)

    # One thread: a turn of the loop per delivery, each of which set the flag again before.
    assert delivery_service.dispatch_due_deliveries(threads=1, linger_seconds=0) == 12
    assert flag_sets == [delivery_service.DISPATCH_FLAG_KEY]
    assert flag_seen_while_sending == [True] * 12
    assert cache.get(delivery_service.DISPATCH_FLAG_KEY) is None  # cleared when it ended


def test_a_dispatcher_sets_its_flag_again_after_clearing_it_for_its_last_look(organization, monkeypatch):
    monkeypatch.setattr(delivery_service, "DISPATCH_FLAG_REFRESH_SECONDS", 3600)
    flag = delivery_service._DispatchFlag(0)
    flag.keep()
    cache.delete(delivery_service.DISPATCH_FLAG_KEY)  # as if it had expired: within the interval, not set again
    flag.keep()
    assert cache.get(delivery_service.DISPATCH_FLAG_KEY) is None
    flag.clear()
    flag.keep()  # work found by the last look: the flag is set again at once
    assert cache.get(delivery_service.DISPATCH_FLAG_KEY) is not None
    flag.clear()


def test_claims_respect_concurrency_cap_and_rate_limit(client, organization, httpserver):
    source = make_source(organization)
    capped, _ = make_destination(organization, httpserver.url_for("/capped"), sources=[source])
    Destination.objects.filter(pk=capped.pk).update(max_concurrency=3)
    ingest_many(client, source, 10)
    assert len(delivery_service.claim_due_deliveries(10)) == 3
    assert delivery_service.claim_due_deliveries(10) == []  # all three slots are taken

    Delivery.objects.filter(status="in_flight").update(status="succeeded")
    Destination.objects.filter(pk=capped.pk).update(max_concurrency=100, rate_limit_per_second=4)
    now = timezone.now()
    assert len(delivery_service.claim_due_deliveries(10, now=now)) == 4
    assert delivery_service.claim_due_deliveries(10, now=now) == []  # this second's budget is spent
    assert len(delivery_service.claim_due_deliveries(10, now=now + timedelta(seconds=1))) == 3


class HangingReceiver:
    """A receiver that accepts connections and never answers until released: then it closes each
    connection it holds, and each new one as soon as it is made. ``most_open`` is the most
    connections it held at once."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._changed = threading.Condition()
        self.released = False
        self.most_open = 0
        self._thread = threading.Thread(target=self._accept, name="hanging-receiver", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._changed:
                if self.released:
                    conn.close()
                    continue
                self._held.append(conn)
                self.most_open = max(self.most_open, len(self._held))
                self._changed.notify_all()

    @property
    def holding(self) -> int:
        with self._changed:
            return len(self._held)

    def wait_holding(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self._held) >= count, timeout)

    def release(self) -> None:
        with self._changed:
            self.released = True
            for conn in self._held:
                conn.close()
            self._held.clear()

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._thread.join(timeout=5)


def test_a_hanging_destination_does_not_hold_back_a_healthy_one(client, organization, httpserver):
    # No deadline decides it (a loaded machine is slow, not wrong): the slow destination's receiver
    # holds its connections until all 20 healthy deliveries have been answered, and only then lets
    # them go. Were the healthy ones held back behind the hanging sends, the receiver would never
    # be released, and the hanging sends would end in their own timeout.
    hanging = HangingReceiver()
    holding_at_the_last_fast = []

    def fast(request):
        # The first healthy request comes while the slow destination's sends hang.
        hanging.wait_holding(2, timeout=PATIENCE_SECONDS)
        fast_answered.append(request.get_json()["id"])
        if len(fast_answered) == 20:
            holding_at_the_last_fast.append(hanging.holding)
            hanging.release()
        return Response("ok")

    fast_answered: list[str] = []
    try:
        slow_source = make_source(organization, name="slow")
        fast_source = make_source(organization, name="fast")
        slow, _ = make_destination(
            organization, f"http://127.0.0.1:{hanging.port}/", sources=[slow_source], timeout_seconds=30
        )
        Destination.objects.filter(pk=slow.pk).update(max_concurrency=2)
        make_destination(organization, httpserver.url_for("/fast"), sources=[fast_source])
        httpserver.expect_request("/fast").respond_with_handler(fast)
        ingest_many(client, slow_source, 6, prefix="slow")
        ingest_many(client, fast_source, 20, prefix="fast")

        delivery_service.dispatch_due_deliveries(threads=8, max_seconds=PATIENCE_SECONDS)
    finally:
        hanging.close()

    fast_deliveries = Delivery.objects.filter(destination__url__contains="/fast")
    assert fast_deliveries.filter(status="succeeded").count() == 20
    assert len(fast_answered) == 20
    # Every healthy delivery was answered while the slow destination's first two sends still hung...
    assert holding_at_the_last_fast == [2]
    # ...which never had more than its cap in flight...
    assert hanging.most_open == 2
    # ...and whose sends ended when released, not in their own timeout.
    slow_attempts = DeliveryAttempt.objects.filter(delivery__destination=slow)
    assert slow_attempts.count() == 6
    assert not any("timed out" in attempt.error for attempt in slow_attempts), [a.error for a in slow_attempts]
    assert Delivery.objects.filter(destination=slow, status="pending", attempt_count=1).count() == 6


# --- circuit breaker and alerts -------------------------------------------------


def test_breaker_pauses_emails_admins_queues_and_drains_in_order_on_resume(client, organization, httpserver, settings):
    settings.CIRCUIT_BREAKER_FAILURES = 3
    settings.CIRCUIT_BREAKER_PERIOD_SECONDS = 0
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/down"), sources=[source])
    httpserver.expect_request("/down").respond_with_data("down", status=503)
    ingest_many(client, source, 3, prefix="first")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("django.db.transaction.on_commit", lambda fn, using=None, robust=False: fn())
        delivery_service.dispatch_due_deliveries(threads=1)
    destination.refresh_from_db()
    assert destination.paused_at is not None and "3 consecutive" in destination.pause_reason
    assert len(mail.outbox) == 1 and "paused" in mail.outbox[0].subject
    assert mail.outbox[0].to == ["owner@acme.example"]
    assert AuditLog.objects.filter(action="destination.paused").exists()

    # Paused: new events queue up and nothing is attempted.
    ingest_many(client, source, 2, prefix="later")
    Delivery.objects.update(next_attempt_at=timezone.now())
    assert delivery_service.claim_due_deliveries(10) == []

    operations.destination_resume(destination=destination)
    httpserver.clear()
    httpserver.expect_request("/up").respond_with_data("ok")
    Destination.objects.filter(pk=destination.pk).update(url=httpserver.url_for("/up"))
    delivery_service.dispatch_due_deliveries(threads=1)
    sent = [request.get_json()["id"] for request, _ in httpserver.log]
    assert sent == ["first_0", "first_1", "first_2", "later_0", "later_1"]  # order of arrival
    assert AuditLog.objects.filter(action="destination.resumed").exists()


def test_pause_and_resume_change_nothing_when_the_destination_is_so_already(organization):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hooks")
    failing_since = timezone.now() - timedelta(minutes=5)
    Destination.objects.filter(pk=destination.pk).update(consecutive_failures=2, failing_since=failing_since)
    with pytest.raises(operations.NothingToDo, match="not paused"):
        operations.destination_resume(destination=destination)
    destination.refresh_from_db()
    assert destination.consecutive_failures == 2 and destination.failing_since == failing_since

    operations.destination_pause(destination=destination, reason="first")
    first_paused_at = Destination.objects.get(pk=destination.pk).paused_at
    with pytest.raises(operations.NothingToDo, match="paused already"):
        operations.destination_pause(destination=destination, reason="second")
    destination.refresh_from_db()
    assert destination.paused_at == first_paused_at and destination.pause_reason == "first"
    assert AuditLog.objects.filter(action="destination.paused").count() == 1
    assert not AuditLog.objects.filter(action="destination.resumed").exists()

    operations.destination_resume(destination=destination)  # paused: resuming starts the count afresh
    destination.refresh_from_db()
    assert destination.paused_at is None and destination.consecutive_failures == 0

    Destination.objects.filter(pk=destination.pk).delete()
    with pytest.raises(operations.OperationError, match="deleted") as raised:
        operations.destination_pause(destination=destination)
    assert not isinstance(raised.value, operations.NothingToDo)


def test_dead_letter_digest_is_one_mail_per_destination_per_interval(client, organization, httpserver, settings):
    from webhooks.services.alerts import send_dead_letter_digests

    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/gone"), sources=[source])
    httpserver.expect_request("/gone").respond_with_data("gone", status=410)
    ingest_many(client, source, 4)
    delivery_service.dispatch_due_deliveries(threads=2)
    assert Delivery.objects.filter(status="dead").count() == 4
    assert send_dead_letter_digests() == 1
    assert "4 deliveries" in mail.outbox[0].subject and "4 × 410" in mail.outbox[0].body
    assert send_dead_letter_digests() == 0  # within the hour: nothing more


# --- operations -----------------------------------------------------------------


def test_replay_creates_a_new_delivery_and_keeps_history(client, organization, httpserver, other_organization):
    source = make_source(organization)
    destination, secret = make_destination(organization, httpserver.url_for("/r"), sources=[source])
    httpserver.expect_request("/r").respond_with_data("ok")
    ingest_many(client, source, 1)
    delivery_service.dispatch_due_deliveries(threads=1)
    event = WebhookEvent.objects.get()

    replay = operations.event_replay(event=event, destination=destination)
    delivery_service.dispatch_due_deliveries(threads=1)
    assert Delivery.objects.filter(event=event).count() == 2
    replay.refresh_from_db()
    assert replay.is_replay and replay.status == "succeeded"
    ids = [request.headers["webhook-id"] for request, _ in httpserver.log]
    assert ids == [str(event.id), str(replay.id)]
    assert AuditLog.objects.filter(action="event.replayed").exists()

    theirs, _ = make_destination(other_organization, httpserver.url_for("/x"))
    with pytest.raises(operations.OperationError):
        operations.event_replay(event=event, destination=theirs)


def test_bulk_retry_by_filter_with_progress(client, organization, httpserver, monkeypatch):
    from webhooks import tasks

    monkeypatch.setattr(tasks.run_bulk_retry, "delay", lambda job_id: None)
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/b"), sources=[source])
    httpserver.expect_request("/b").respond_with_data("no", status=400)
    ingest_many(client, source, 7)
    delivery_service.dispatch_due_deliveries(threads=2)
    assert Delivery.objects.filter(status="dead").count() == 7

    job = operations.bulk_retry_start(organization=organization, filters={"source": source.pk, "statuses": ["dead"]})
    assert job.total == 7
    monkeypatch.setattr(operations, "BULK_RETRY_BATCH", 3)
    job = operations.bulk_retry_run(job.pk)
    assert (job.status, job.retried) == (BulkRetry.Status.DONE, 7)
    assert Delivery.objects.filter(status="pending").count() == 7
    assert AuditLog.objects.filter(action="deliveries.bulk_retry_requested").exists()
    with pytest.raises(operations.OperationError):
        operations.bulk_retry_start(organization=organization, filters={"statuses": ["succeeded"]})
    # Nothing left to retry: said so, with no job and no audit entry.
    jobs = BulkRetry.objects.count()
    with pytest.raises(operations.OperationError, match="nothing to retry"):
        operations.bulk_retry_start(organization=organization, filters={"source": source.pk})
    assert BulkRetry.objects.count() == jobs


# --- data lifecycle ---------------------------------------------------------------


def test_retention_deletes_old_events_in_batches_and_keeps_monthly_counts(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/k"), sources=[source])
    httpserver.expect_request("/k").respond_with_data("ok")
    ingest_many(client, source, 5)
    delivery_service.dispatch_due_deliveries(threads=2)
    old = list(WebhookEvent.objects.order_by("id")[:3])
    WebhookEvent.objects.filter(pk__in=[e.pk for e in old]).update(received_at=timezone.now() - timedelta(days=31))
    Delivery.objects.filter(event__in=old).update(completed_at=timezone.now() - timedelta(days=31))

    assert purge_expired_events(batch_size=2) == 3
    assert WebhookEvent.objects.count() == 2
    assert Delivery.objects.count() == 2 and DeliveryAttempt.objects.count() == 2
    assert MonthlyUsage.objects.get(organization=organization).events == 5


def test_retention_locks_events_and_deliveries_in_id_order(client, organization, httpserver):
    # Recording a batch locks its deliveries in id order: locked the other way round (the models'
    # newest-first default), a purge and a recording could each hold what the other waits for.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/k"), sources=[source])
    httpserver.expect_request("/k").respond_with_data("ok")
    ingest_many(client, source, 3)
    delivery_service.dispatch_due_deliveries(threads=2)
    WebhookEvent.objects.update(received_at=timezone.now() - timedelta(days=31))
    Delivery.objects.update(completed_at=timezone.now() - timedelta(days=31))

    with CaptureQueriesContext(connection) as queries:
        assert purge_expired_events() == 3
    locking = [query["sql"] for query in queries.captured_queries if query["sql"].endswith(" UPDATE")]
    # The events while their keys are kept (no key changes: FOR NO KEY UPDATE); then the events and
    # their deliveries, to delete them.
    tables = [
        ("webhookevent" if "webhookevent" in sql else "delivery" if "webhooks_delivery" in sql else sql)
        + (" no key" if sql.endswith("FOR NO KEY UPDATE") else "")
        for sql in locking
    ]
    assert tables == ["webhookevent no key", "webhookevent", "delivery"]
    for sql in locking:  # by the primary key (the selected column 1), lowest first
        assert sql.rsplit(" ORDER BY ", 1)[1] in ("1 ASC FOR UPDATE", "1 ASC FOR NO KEY UPDATE"), sql


def test_quota_never_refuses_and_owners_are_told_once(client, organization):
    organization.monthly_event_quota = 3
    organization.save()
    source = make_source(organization)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("django.db.transaction.on_commit", lambda fn, using=None, robust=False: fn())
        ingest_many(client, source, 5, prefix="a")
        ingest_many(client, source, 2, prefix="b")
    assert WebhookEvent.objects.filter(status="processed").count() == 7
    assert MonthlyUsage.objects.get(organization=organization).events == 7
    quota_mails = [m for m in mail.outbox if "quota" in m.subject]
    assert len(quota_mails) == 1 and quota_mails[0].to == ["owner@acme.example"]


def test_a_backlog_starts_the_next_dispatcher_slot(client, organization, httpserver, monkeypatch, settings):
    """While the first dispatcher finds more due work than it has threads, it asks for a second one."""
    settings.DELIVERY_DISPATCHERS = 2
    slots = []
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: slots.append(slot))
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/a"), sources=[source])
    httpserver.expect_request("/a").respond_with_data("ok")
    ingest_many(client, source, 12)
    assert delivery_service.dispatch_due_deliveries(threads=4, slot=0) == 12
    assert 1 in slots and 2 not in slots  # never beyond DELIVERY_DISPATCHERS

    slots.clear()
    ingest_many(client, source, 12, prefix="late")
    assert delivery_service.dispatch_due_deliveries(threads=4, slot=1) == 12
    assert slots == []  # the last slot starts no other


# --- results that are hard to store or to send -----------------------------------------


def test_a_receiver_answering_binary_is_recorded_with_its_batch_neighbours(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/binary"), sources=[source])
    make_destination(organization, httpserver.url_for("/text"), sources=[source])
    httpserver.expect_request("/binary").respond_with_data(b"\x00\x01\xff gzip-ish")  # PostgreSQL text refuses NUL
    httpserver.expect_request("/text").respond_with_data("ok")
    ingest_many(client, source, 3)

    assert delivery_service.dispatch_due_deliveries(threads=6) == 6
    assert Delivery.objects.filter(status="succeeded").count() == 6
    binary = DeliveryAttempt.objects.filter(delivery__destination__url__endswith="/binary")
    assert binary.count() == 3 and all(a.response_body.startswith("\ufffd\x01\ufffd") for a in binary)


def test_a_result_the_database_refuses_is_recorded_without_the_answer_and_the_rest_normally(
    client, organization, httpserver, monkeypatch
):
    # Without the clean-up of services.text, a NUL in one answer fails the batch's INSERT:
    # each result is then recorded on its own, the refused one without the receiver's answer.
    monkeypatch.setattr(delivery_service, "storable_text", lambda text: text)
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/nul"), sources=[source])
    make_destination(organization, httpserver.url_for("/fine"), sources=[source])
    httpserver.expect_request("/nul").respond_with_data(b"a\x00b")
    httpserver.expect_request("/fine").respond_with_data("fine")
    ingest_many(client, source, 1)
    claimed = delivery_service.claim_due_deliveries(10)
    assert len(claimed) == 2

    recorded = delivery_service.record_results([(d, delivery_service.send(d)) for d in claimed])
    assert len(recorded) == 2
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    nul = DeliveryAttempt.objects.get(delivery__destination__url__endswith="/nul")
    assert nul.response_status == 200 and nul.response_body == ""
    assert nul.error == "the receiver's answer could not be stored"
    assert DeliveryAttempt.objects.get(delivery__destination__url__endswith="/fine").response_body == "fine"


def test_an_attempt_that_cannot_be_made_is_a_failed_attempt_not_a_stuck_delivery(
    client, organization, httpserver, monkeypatch
):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/x"), sources=[source])
    ingest_many(client, source, 1)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(delivery_service.outbound, "post", broken)
    assert delivery_service.dispatch_due_deliveries(threads=2) == 1
    delivery = Delivery.objects.get()
    assert delivery.status == "pending" and delivery.next_attempt_at > timezone.now()
    assert delivery.last_error == "the attempt could not be made: RuntimeError"


def test_a_stored_header_that_is_not_latin_1_is_sent(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/h"), sources=[source])
    httpserver.expect_request("/h").respond_with_data("ok")
    body = '{"id":"evt_odd_header","object":"event","type":"invoice.paid"}'
    assert post_stripe(client, source, body, STRIPE_SECRET, HTTP_X_ODD="a\x00b").status_code == 200
    processing.process_received_events()
    assert WebhookEvent.objects.get().headers["X-Odd"] == "a\ufffdb"  # stored as text PostgreSQL accepts

    delivery_service.dispatch_due_deliveries(threads=2)
    assert Delivery.objects.get().status == "succeeded"
    assert httpserver.log[0][0].headers["X-Odd"] == "a?b"


def test_a_stale_claims_result_does_not_overwrite_a_newer_claim(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/slow"), sources=[source])
    ingest_many(client, source, 1)
    (stale,) = delivery_service.claim_due_deliveries(1)
    # The sweeper released the slow attempt and another dispatcher claimed the delivery again.
    newer_claim = stale.claimed_at + timedelta(seconds=200)
    Delivery.objects.filter(pk=stale.pk).update(claimed_at=newer_claim, attempt_count=2)

    result = delivery_service.SendResult(timezone.now(), {}, OutboundResponse(status=500, body="", duration_ms=1))
    delivery_service.record_results([(stale, result)])
    current = Delivery.objects.get(pk=stale.pk)
    assert current.status == "in_flight" and current.claimed_at == newer_claim  # the newer claim decides
    assert DeliveryAttempt.objects.filter(delivery=current).count() == 1  # the stale attempt is still on record


@contextlib.contextmanager
def commit_reply_lost_once(monkeypatch):
    """The first recording's COMMIT is carried out by PostgreSQL, then its connection drops before
    the reply arrives: the caller sees an error for a transaction that did commit. Yields what
    happened: the deliveries' rows as that COMMIT left them, and how often results were recorded."""
    from types import SimpleNamespace

    from django.db import OperationalError, connections

    wrapper = type(connections["default"])
    real_commit, real_record = wrapper._commit, delivery_service._record_results
    seen = SimpleNamespace(committed={}, recordings=0)

    def record(results, **kwargs):
        seen.recordings += 1
        return real_record(results, **kwargs)

    def commit_then_drop(self):
        real_commit(self)
        if seen.recordings == 1 and not seen.committed:
            rows = self.connection.execute(
                "SELECT id, status, attempt_count, claimed_at, next_attempt_at, completed_at, last_error"
                " FROM webhooks_delivery"
            )
            seen.committed = {row[0]: row[1:] for row in rows}
            self.connection.close()  # the reply never arrives
            raise OperationalError("consuming input failed: server closed the connection unexpectedly")

    monkeypatch.setattr(delivery_service, "_record_results", record)
    monkeypatch.setattr(wrapper, "_commit", commit_then_drop)
    yield seen


def pause_on_the_first_failure(client, organization, httpserver, settings):
    """A destination whose one delivery has just been sent and failed: recording it pauses the destination."""
    settings.CIRCUIT_BREAKER_FAILURES = 1
    settings.CIRCUIT_BREAKER_PERIOD_SECONDS = 0
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/down"), sources=[source])
    httpserver.expect_request("/down").respond_with_data("down", status=503)
    ingest_many(client, source, 1)
    claimed = delivery_service.claim_due_deliveries(10)
    return destination, [(delivery, delivery_service.send(delivery)) for delivery in claimed]


def pause_emails():
    return [message for message in mail.outbox if message.subject.startswith("[Hookline] Destination paused")]


@pytest.mark.django_db(transaction=True)  # the pause's after-commit step runs after a real COMMIT
def test_a_pause_is_emailed_once_after_its_commit_and_not_again_by_the_sweeper(
    client, organization, httpserver, settings
):
    destination, results = pause_on_the_first_failure(client, organization, httpserver, settings)

    delivery_service.record_results(results)

    destination.refresh_from_db()
    assert destination.paused_at is not None and destination.pause_notice_due_at is None
    assert len(pause_emails()) == 1 and pause_emails()[0].to == ["owner@acme.example"]
    assert processing.sweep()["pause_emails"] == 0
    assert len(pause_emails()) == 1


@pytest.mark.django_db(transaction=True)
def test_a_pause_whose_commit_reply_was_lost_is_emailed_by_the_sweeper_once(
    client, organization, httpserver, settings, monkeypatch
):
    # The pause committed, but the dispatcher saw an error: Django drops the after-commit step then.
    destination, results = pause_on_the_first_failure(client, organization, httpserver, settings)

    with commit_reply_lost_once(monkeypatch) as lost:
        delivery_service.record_results(results)

    assert lost.committed and Destination.objects.get(pk=destination.pk).paused_at is not None
    assert pause_emails() == []
    assert processing.sweep()["pause_emails"] == 1
    assert processing.sweep()["pause_emails"] == 0
    assert len(pause_emails()) == 1 and "endpoint" in pause_emails()[0].subject
    assert Destination.objects.get(pk=destination.pk).pause_notice_due_at is None


@pytest.mark.django_db(transaction=True)
def test_a_pause_email_that_failed_is_sent_by_the_sweeper_once_its_hold_ends(
    client, organization, httpserver, settings, monkeypatch, caplog
):
    from django.core.mail import EmailMultiAlternatives

    from webhooks.services.alerts import PAUSE_NOTICE_HOLD

    destination, results = pause_on_the_first_failure(client, organization, httpserver, settings)
    real_send = EmailMultiAlternatives.send
    monkeypatch.setattr(EmailMultiAlternatives, "send", lambda self, fail_silently=False: 1 / 0)

    delivery_service.record_results(results)

    assert pause_emails() == [] and "could not send the paused-destination alert" in caplog.text
    monkeypatch.setattr(EmailMultiAlternatives, "send", real_send)
    assert processing.sweep()["pause_emails"] == 0  # held by the sender that failed, for a while
    later = timezone.now() + PAUSE_NOTICE_HOLD + timedelta(seconds=1)
    assert processing.sweep(now=later)["pause_emails"] == 1
    assert processing.sweep(now=later)["pause_emails"] == 0
    assert len(pause_emails()) == 1


def delivery_rows():
    return {
        row[0]: row[1:]
        for row in Delivery.objects.values_list(
            "id", "status", "attempt_count", "claimed_at", "next_attempt_at", "completed_at", "last_error"
        )
    }


@pytest.mark.django_db(transaction=True)  # the recording's COMMIT must be a real one
def test_a_recording_whose_commit_reply_was_lost_is_not_recorded_again(client, organization, httpserver, monkeypatch):
    # The database is reachable again at once, so record_results' fallbacks record the batch
    # again one by one: the sends were recorded, and must be so once.
    source = make_source(organization)
    failing, _ = make_destination(organization, httpserver.url_for("/down"), sources=[source])
    working, _ = make_destination(organization, httpserver.url_for("/up"), sources=[source])
    httpserver.expect_request("/down").respond_with_data("down", status=503)
    httpserver.expect_request("/up").respond_with_data("ok")
    ingest_many(client, source, 1)
    claimed = delivery_service.claim_due_deliveries(10)
    results = [(delivery, delivery_service.send(delivery)) for delivery in claimed]

    with commit_reply_lost_once(monkeypatch) as lost:
        delivery_service.record_results(results)

    assert lost.committed and lost.recordings == 3  # the batch, then each result on its own
    assert delivery_rows() == lost.committed  # as the first recording left them
    statuses = dict(Delivery.objects.values_list("destination_id", "status"))
    assert statuses == {failing.pk: "pending", working.pk: "succeeded"}
    assert sorted(DeliveryAttempt.objects.values_list("delivery_id", "attempt_number")) == sorted(
        (delivery.pk, 1) for delivery in claimed
    )
    # One failed send counts once towards the circuit breaker.
    assert Destination.objects.get(pk=failing.pk).consecutive_failures == 1


@pytest.mark.django_db(transaction=True)
def test_a_result_kept_through_an_outage_after_its_commit_reply_was_lost_is_recorded_once(
    client, organization, httpserver, monkeypatch
):
    # The connection dropped after the COMMIT and the database was gone when the dispatcher
    # looked: it keeps the result and records it again next turn.
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("ok")
    ingest_many(client, source, 1)
    looks = []

    def unreachable_at_the_first_look():
        looks.append(1)
        return len(looks) == 1

    monkeypatch.setattr(delivery_service, "_database_unreachable", unreachable_at_the_first_look)
    monkeypatch.setattr(delivery_service, "DATABASE_RETRY_SECONDS", 0.01)

    with commit_reply_lost_once(monkeypatch) as lost:
        attempted = delivery_service.dispatch_due_deliveries(max_seconds=5, threads=2, slot=1, linger_seconds=0)

    assert lost.committed and looks == [1]  # the reply was lost, and the result kept rather than redone at once
    assert lost.recordings == 2  # then recorded again next turn
    assert attempted == 1 and len(httpserver.log) == 1
    assert delivery_rows() == lost.committed
    delivery = Delivery.objects.get()
    assert delivery.status == "succeeded"
    assert list(delivery.attempts.values_list("attempt_number", flat=True)) == [1]


@pytest.mark.django_db(transaction=True)  # the connection is dropped and made again
def test_a_connection_that_breaks_under_the_recording_gives_no_send_twice(
    client, organization, httpserver, monkeypatch, caplog
):
    # psycopg raises InterfaceError on a connection it can no longer use, which is no DatabaseError
    # (PEP 249): taken for one result's bug, the batch was recorded one by one on the same broken
    # connection, the error escaped the last resort and ended the dispatcher, and its sends, left
    # in flight, were released by the sweeper and sent again. Here the rollback still goes through,
    # which clears Django's mark of the error, so only a new connection tells the database is up.
    import psycopg
    from django.db import connection

    source = make_source(organization)
    for name in ("a", "b", "c"):
        make_destination(organization, httpserver.url_for(f"/{name}"), sources=[source])
        httpserver.expect_request(f"/{name}").respond_with_data("ok")
    ingest_many(client, source, 1)
    real_record = delivery_service._record_results
    broken = []

    def break_the_connection_first(results, **kwargs):
        if not broken:
            connection.ensure_connection()
            raw = connection.connection

            def closed_under_us(*args, **kwargs):
                raise psycopg.InterfaceError("the connection is closed under us")

            # Every further use of this connection fails until Django drops it and connects anew.
            monkeypatch.setattr(raw, "cursor", closed_under_us)
            monkeypatch.setattr(raw, "execute", closed_under_us)
            broken.append(raw)
        return real_record(results, **kwargs)

    monkeypatch.setattr(delivery_service, "_record_results", break_the_connection_first)
    attempted = delivery_service.dispatch_due_deliveries(max_seconds=5, threads=4, slot=1, linger_seconds=0)

    assert broken and connection.connection is not broken[0]  # the broken connection was dropped
    # The database was up: recorded on a new connection at once, not held as through an outage
    # (until the broken one grew old enough to be dropped, a minute).
    assert "database unavailable" not in caplog.text
    assert attempted == 3
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    assert sorted(DeliveryAttempt.objects.values_list("attempt_number", flat=True)) == [1, 1, 1]
    delivery_service.release_lost_claims(now=timezone.now() + timedelta(days=1))
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, threads=4, slot=1, linger_seconds=0) == 0
    assert sorted(request.path for request, _ in httpserver.log) == ["/a", "/b", "/c"]  # each sent once


@pytest.mark.django_db(transaction=True)
def test_a_database_lost_while_recording_one_by_one_gives_the_whole_batch_back(
    client, organization, httpserver, monkeypatch
):
    # The batch failed for one row, the database went away after the first result was recorded
    # on its own: the caller keeps all of them (the dispatcher records them once it is back) and
    # the one already recorded is not recorded twice then.
    source = make_source(organization)
    for name in ("a", "b", "c"):
        make_destination(organization, httpserver.url_for(f"/{name}"), sources=[source])
        httpserver.expect_request(f"/{name}").respond_with_data("ok")
    ingest_many(client, source, 1)
    results = [(delivery, delivery_service.send(delivery)) for delivery in delivery_service.claim_due_deliveries(10)]
    record = delivery_service._record_results
    calls = []

    def one_row_refused_then_the_database_gone(batch, **kwargs):
        calls.append(len(batch))
        if len(calls) == 1:
            raise IntegrityError("one row refused")
        if len(calls) == 3:
            raise OperationalError("server closed the connection unexpectedly")
        return record(batch, **kwargs)

    monkeypatch.setattr(delivery_service, "_record_results", one_row_refused_then_the_database_gone)
    monkeypatch.setattr(delivery_service, "_database_unreachable", lambda: len(calls) >= 3)
    with pytest.raises(delivery_service.DatabaseUnavailable):
        delivery_service.record_results(results)
    assert calls == [3, 1, 1]  # nothing was recorded without its answer after the outage began
    assert Delivery.objects.filter(status="succeeded").count() == 1

    monkeypatch.setattr(delivery_service, "_record_results", record)
    delivery_service.record_results(results)  # the dispatcher's next turn, the database back
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    assert sorted(DeliveryAttempt.objects.values_list("attempt_number", flat=True)) == [1, 1, 1]
    assert not DeliveryAttempt.objects.filter(error="the receiver's answer could not be stored").exists()


@pytest.mark.django_db(transaction=True)
def test_a_database_lost_while_recording_the_last_result_without_its_answer_gives_the_batch_back(
    client, organization, httpserver, monkeypatch
):
    # The result's row was refused, then the database went away as it was recorded without the
    # receiver's answer: dropped there, its delivery would be released by the sweeper and sent again.
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("ok")
    ingest_many(client, source, 1)
    results = [(delivery, delivery_service.send(delivery)) for delivery in delivery_service.claim_due_deliveries(10)]
    record = delivery_service._record_results
    calls = []

    def row_refused_then_the_database_gone(batch, **kwargs):
        calls.append(len(batch))
        if len(calls) < 3:
            raise IntegrityError("one row refused")
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(delivery_service, "_record_results", row_refused_then_the_database_gone)
    monkeypatch.setattr(delivery_service, "_database_unreachable", lambda: len(calls) >= 3)
    with pytest.raises(delivery_service.DatabaseUnavailable):
        delivery_service.record_results(results)
    assert calls == [1, 1, 1]  # the result, on its own, then without its answer

    monkeypatch.setattr(delivery_service, "_record_results", record)
    delivery_service.record_results(results)  # the dispatcher's next turn, the database back
    assert Delivery.objects.get().status == "succeeded"


def test_a_result_recorded_twice_writes_one_attempt_and_moves_the_delivery_once(client, organization, httpserver):
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/down"), sources=[source])
    httpserver.expect_request("/down").respond_with_data("down", status=500)
    ingest_many(client, source, 1)
    (claimed,) = delivery_service.claim_due_deliveries(1)
    # What a caller that saw the recording fail still holds: the delivery as it was claimed.
    held_by_the_caller = Delivery.objects.select_related("event", "destination").get(pk=claimed.pk)
    result = delivery_service.send(claimed)

    delivery_service.record_results([(claimed, result)])
    first = delivery_rows()
    delivery_service.record_results([(held_by_the_caller, result)])

    assert delivery_rows() == first
    assert DeliveryAttempt.objects.count() == 1
    assert Destination.objects.get(pk=destination.pk).consecutive_failures == 1


def test_a_result_whose_claim_was_released_and_taken_again_is_not_recorded_onto_the_new_claim(
    client, organization, httpserver
):
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest_many(client, source, 1)
    (stale,) = delivery_service.claim_due_deliveries(1)
    stale_result = delivery_service.SendResult(
        timezone.now(), {}, OutboundResponse(status=503, body="busy", duration_ms=1)
    )
    # The stale send outlived its claim: the sweeper released it, another dispatcher claimed it again.
    later = timezone.now() + timedelta(hours=1)
    assert delivery_service.release_lost_claims(now=later) == 1
    (newer,) = delivery_service.claim_due_deliveries(1, now=later)
    assert (newer.attempt_count, newer.claimed_at) == (2, later)

    for _ in range(2):  # recorded, then recorded again after a lost COMMIT reply
        delivery_service.record_results([(stale, stale_result)])
        current = Delivery.objects.get(pk=stale.pk)
        assert (current.status, current.claimed_at, current.attempt_count) == ("in_flight", later, 2)
        assert current.last_error == "" and current.last_status_code is None
        # The stale send did reach the receiver: it is on record, under its own attempt number.
        assert list(current.attempts.values_list("attempt_number", "response_status")) == [(1, 503)]
        assert Destination.objects.get(pk=destination.pk).consecutive_failures == 1

    newer_result = delivery_service.SendResult(timezone.now(), {}, OutboundResponse(status=200, body="", duration_ms=1))
    delivery_service.record_results([(newer, newer_result)])
    delivery_service.record_results([(stale, stale_result)])
    current = Delivery.objects.get(pk=stale.pk)
    assert current.status == "succeeded" and current.last_status_code == 200
    assert list(current.attempts.values_list("attempt_number", "response_status")) == [(1, 503), (2, 200)]
    assert Destination.objects.get(pk=destination.pk).consecutive_failures == 0


def test_a_stale_result_and_its_deliverys_newer_claim_in_one_batch_are_both_recorded_once(
    client, organization, httpserver
):
    # Through a long outage a dispatcher may hold a result whose delivery it has since claimed
    # and sent again.
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest_many(client, source, 1)
    (stale,) = delivery_service.claim_due_deliveries(1)
    later = timezone.now() + timedelta(hours=1)
    assert delivery_service.release_lost_claims(now=later) == 1
    (newer,) = delivery_service.claim_due_deliveries(1, now=later)
    batch = [
        (stale, delivery_service.SendResult(timezone.now(), {}, OutboundResponse(status=None, body="", duration_ms=1))),
        (newer, delivery_service.SendResult(timezone.now(), {}, OutboundResponse(status=200, body="", duration_ms=1))),
    ]

    delivery_service.record_results(batch)
    delivery_service.record_results(batch)

    current = Delivery.objects.get(pk=stale.pk)
    assert (current.status, current.attempt_count, current.claimed_at) == ("succeeded", 2, None)
    assert list(current.attempts.values_list("attempt_number", "response_status")) == [(1, None), (2, 200)]


def test_a_batch_sharing_one_update_with_a_send_recorded_before_records_only_the_others(
    client, organization, httpserver
):
    # Claimed together and ending the same way, the two sends share one guarded UPDATE; the first
    # was recorded before (its batch then failed partway, say), so that UPDATE finishes one row of
    # two, and which send still needs its attempt is told from the attempts on record.
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest_many(client, source, 2)
    first, second = delivery_service.claim_due_deliveries(2)
    assert first.claimed_at == second.claimed_at
    held_by_the_caller = Delivery.objects.select_related("event", "destination").get(pk=first.pk)

    def ok():
        return delivery_service.SendResult(timezone.now(), {}, OutboundResponse(status=200, body="", duration_ms=1))

    first_result = ok()
    delivery_service.record_results([(first, first_result)])
    recorded_first = delivery_rows()[first.pk]

    delivery_service.record_results([(held_by_the_caller, first_result), (second, ok())])

    assert delivery_rows()[first.pk] == recorded_first
    assert Delivery.objects.get(pk=second.pk).status == "succeeded"
    assert sorted(DeliveryAttempt.objects.values_list("delivery_id", "attempt_number")) == [
        (first.pk, 1),
        (second.pk, 1),
    ]
    assert Destination.objects.get(pk=destination.pk).consecutive_failures == 0


def test_retention_keeps_events_not_yet_delivered(client, organization, httpserver):
    source = make_source(organization)
    destination, _ = make_destination(organization, httpserver.url_for("/paused"), sources=[source])
    ingest_many(client, source, 2)  # fanned out: two pending deliveries
    body = '{"id":"evt_unprocessed","object":"event","type":"invoice.paid"}'
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200  # still "received"
    WebhookEvent.objects.update(received_at=timezone.now() - timedelta(days=400))

    assert purge_expired_events() == 0
    assert WebhookEvent.objects.count() == 3

    Delivery.objects.update(status="dead")
    WebhookEvent.objects.filter(provider_event_id="evt_unprocessed").update(status="processed")
    assert purge_expired_events() == 3


def delivered_long_ago(client, organization, httpserver, count, path="/gone"):
    """``count`` events received 400 days ago (the retention is 30), each with one delivery that died."""
    source = make_source(organization)
    make_destination(organization, httpserver.url_for(path), sources=[source])
    httpserver.expect_request(path).respond_with_data("no", status=410)
    ingest_many(client, source, count)
    delivery_service.dispatch_due_deliveries(threads=1)
    assert Delivery.objects.filter(status="dead").count() == count
    WebhookEvent.objects.update(received_at=timezone.now() - timedelta(days=400))
    return list(WebhookEvent.objects.order_by("id"))


def test_retention_counts_from_when_the_last_delivery_ended(client, organization, httpserver):
    # Received long ago, but its delivery died only yesterday (a destination paused for days, a long
    # retry schedule): the dead-letter mail has just gone out, and the tenant must still find the event.
    died_yesterday, finished_long_ago = delivered_long_ago(client, organization, httpserver, 2)
    Delivery.objects.filter(event=died_yesterday).update(completed_at=timezone.now() - timedelta(days=1))
    Delivery.objects.filter(event=finished_long_ago).update(completed_at=timezone.now() - timedelta(days=31))

    assert purge_expired_events() == 1
    assert list(WebhookEvent.objects.values_list("pk", flat=True)) == [died_yesterday.pk]
    assert Delivery.objects.filter(event=died_yesterday).count() == 1

    # Once the delivery's end too is older than the retention, the event goes.
    Delivery.objects.filter(event=died_yesterday).update(completed_at=timezone.now() - timedelta(days=31))
    assert purge_expired_events() == 1
    assert not WebhookEvent.objects.exists()


def test_retention_keeps_an_event_while_any_of_its_deliveries_ended_within_it(client, organization, httpserver):
    (event,) = delivered_long_ago(client, organization, httpserver, 1)
    make_destination(organization, httpserver.url_for("/other"), sources=[event.source])
    other = Delivery.objects.create(
        organization=organization,
        event=event,
        destination=Destination.objects.get(url=httpserver.url_for("/other")),
        status=Delivery.Status.SUCCEEDED,
        completed_at=timezone.now() - timedelta(days=2),
    )
    Delivery.objects.exclude(pk=other.pk).update(completed_at=timezone.now() - timedelta(days=200))

    assert purge_expired_events() == 0
    assert WebhookEvent.objects.filter(pk=event.pk).exists()


def test_a_retry_by_hand_after_death_starts_the_retention_anew(client, organization, httpserver):
    (event,) = delivered_long_ago(client, organization, httpserver, 1)
    dead = Delivery.objects.get(event=event)
    Delivery.objects.filter(pk=dead.pk).update(completed_at=timezone.now() - timedelta(days=31))

    # The tenant retries it by hand before the next run; it dies again, now.
    delivery_service.delivery_retry(delivery=dead)
    delivery_service.dispatch_due_deliveries(threads=1)
    dead.refresh_from_db()
    assert dead.status == Delivery.Status.DEAD and dead.attempt_count == 2

    assert purge_expired_events() == 0
    assert WebhookEvent.objects.filter(pk=event.pk).exists()
    # 30 days after the retry's end it goes.
    assert purge_expired_events(now=dead.completed_at + timedelta(days=30, seconds=1)) == 1
    assert not WebhookEvent.objects.exists()


@pytest.mark.parametrize("by", ["retry", "replay"])
def test_a_retry_or_replay_between_the_keys_commit_and_the_delete_keeps_the_event(
    client, organization, httpserver, monkeypatch, by
):
    # The batch's ids were read, their keys committed; the tenant acts while the purge waits for
    # older statements. The delete looks at the events again under their locks and keeps this one.
    from webhooks.services import lifecycle

    (event,) = delivered_long_ago(client, organization, httpserver, 1)
    dead = Delivery.objects.get(event=event)
    Delivery.objects.filter(pk=dead.pk).update(completed_at=timezone.now() - timedelta(days=31))

    def tenant_acts_meanwhile(timeout):
        if by == "retry":
            delivery_service.delivery_retry(delivery=dead)
        else:
            operations.event_replay(event=event, destination=dead.destination)
        return True

    monkeypatch.setattr(lifecycle, "_older_statements_ended", tenant_acts_meanwhile)
    assert purge_expired_events() == 0
    assert Delivery.objects.filter(event=event, status=Delivery.Status.PENDING).count() == 1


def test_rejected_requests_go_by_their_receipt_alone(client, organization):
    source = make_source(organization)
    body = '{"id":"evt_forged","object":"event","type":"invoice.paid"}'
    assert post_stripe(client, source, body, "whsec_not_the_secret").status_code == 401
    rejected = WebhookEvent.objects.get(status=WebhookEvent.Status.REJECTED)
    WebhookEvent.objects.filter(pk=rejected.pk).update(received_at=timezone.now() - timedelta(days=29))
    assert purge_expired_events() == 0

    WebhookEvent.objects.filter(pk=rejected.pk).update(received_at=timezone.now() - timedelta(days=31))
    assert purge_expired_events() == 1
    assert not WebhookEvent.objects.exists()


def test_one_destinations_backlog_does_not_hide_other_tenants_due_deliveries(
    client, organization, other_organization, httpserver
):
    busy_source = make_source(organization, name="busy")
    busy, _ = make_destination(organization, httpserver.url_for("/busy"), sources=[busy_source])
    Destination.objects.filter(pk=busy.pk).update(max_concurrency=2)
    ingest_many(client, busy_source, 60, prefix="busy")  # older than anything the other tenant has
    other_source = make_source(other_organization, name="quiet")
    make_destination(other_organization, httpserver.url_for("/quiet"), sources=[other_source])
    ingest_many(client, other_source, 1, prefix="quiet")

    # 8 slots: the busy destination may take 2, and its 60 due rows fill a first round of 32 candidates.
    first = delivery_service.claim_due_deliveries(8)
    assert sorted(d.destination.url.rsplit("/", 1)[1] for d in first) == ["busy", "busy", "quiet"]
    # At its cap, the busy destination is left out before the limit; nothing else is due.
    assert delivery_service.claim_due_deliveries(8) == []


def test_one_tenant_s_destinations_cannot_take_every_sending_thread(
    client, organization, other_organization, httpserver, settings
):
    # Two destinations of one tenant that never answer, each allowed 50 sends at once, and a backlog
    # older than anything the other tenant has: every slot that freed up went to them.
    settings.ORGANIZATION_MAX_CONCURRENCY = 4
    for name in ("silent-a", "silent-b"):
        source = make_source(organization, name=name)
        destination, _ = make_destination(organization, httpserver.url_for(f"/{name}"), sources=[source])
        Destination.objects.filter(pk=destination.pk).update(max_concurrency=50)
        ingest_many(client, source, 10, prefix=name)
    other_source = make_source(other_organization, name="quiet")
    make_destination(other_organization, httpserver.url_for("/quiet"), sources=[other_source])
    ingest_many(client, other_source, 1, prefix="quiet")

    first = delivery_service.claim_due_deliveries(8)
    assert sorted(d.destination.url.rsplit("/", 1)[1] for d in first) == ["quiet"] + ["silent-a"] * 4
    # The tenant's 4 are still in flight: its 16 others wait, however many slots are free.
    assert delivery_service.claim_due_deliveries(8) == []


def test_a_tenant_at_its_limit_is_passed_over_when_looking_beyond_the_backlog(
    client, organization, other_organization, httpserver, settings
):
    # The first look (8 candidates for 2 slots) sees only the tenant's first two destinations; the
    # look beyond it took the destinations waiting longest, the tenant's third one, to which its
    # limit then left no room, and the other tenant's delivery was not reached.
    settings.ORGANIZATION_MAX_CONCURRENCY = 1
    for name in ("silent-a", "silent-b", "silent-c"):
        source = make_source(organization, name=name)
        make_destination(organization, httpserver.url_for(f"/{name}"), sources=[source])
        ingest_many(client, source, 5, prefix=name)
    other_source = make_source(other_organization, name="quiet")
    make_destination(other_organization, httpserver.url_for("/quiet"), sources=[other_source])
    ingest_many(client, other_source, 1, prefix="quiet")

    claimed = delivery_service.claim_due_deliveries(2)
    assert sorted(d.destination.url.rsplit("/", 1)[1] for d in claimed) == ["quiet", "silent-a"]


def test_a_tenant_at_its_limit_found_only_beyond_the_backlog_does_not_fill_the_look(
    client, organization, other_organization, httpserver, settings
):
    # One destination's backlog (a slow receiver at its own cap) fills the first look, so the
    # claim looks beyond it. There, the destinations waiting longest are those of a tenant already
    # at its limit, which the first look never saw: as many of them as there are free slots took
    # the whole look, and a third tenant's delivery waited as long as that tenant's backlog lasted.
    from organizations.services import organization_create

    settings.ORGANIZATION_MAX_CONCURRENCY = 1
    backlog_source = make_source(organization, name="backlog")
    backlog, _ = make_destination(organization, httpserver.url_for("/backlog"), sources=[backlog_source])
    Destination.objects.filter(pk=backlog.pk).update(max_concurrency=1)
    ingest_many(client, backlog_source, 9, prefix="backlog")
    assert [d.destination_id for d in delivery_service.claim_due_deliveries(1)] == [backlog.pk]
    at_limit = []
    for name in ("full-a", "full-b", "full-c"):
        source = make_source(other_organization, name=name)
        at_limit.append(make_destination(other_organization, httpserver.url_for(f"/{name}"), sources=[source])[0])
        ingest_many(client, source, 1, prefix=name)
    assert [d.destination_id for d in delivery_service.claim_due_deliveries(1)] == [at_limit[0].pk]
    third = organization_create(name="Initech", slug="initech", owner_email="owner@initech.example")
    quiet_source = make_source(third, name="quiet")
    quiet, _ = make_destination(third, httpserver.url_for("/quiet"), sources=[quiet_source])
    ingest_many(client, quiet_source, 1, prefix="quiet")

    claimed = delivery_service.claim_due_deliveries(2)
    assert [d.destination_id for d in claimed] == [quiet.pk]


def test_an_organizations_own_cap_is_claimed_to_below_and_above_the_platforms(
    client, organization, other_organization, httpserver, settings
):
    # The platform's limit (4) lies between a noisy tenant's (2) and a large tenant's (6); a third
    # tenant with none set follows the platform's. Each has two destinations that take up to 50 at
    # once and a backlog of 10 due deliveries on each: only the organizations' caps bound the claim.
    from organizations.services import organization_create

    settings.ORGANIZATION_MAX_CONCURRENCY = 4
    third = organization_create(name="Initech", slug="initech", owner_email="owner@initech.example")
    Organization.objects.filter(pk=organization.pk).update(max_concurrency=2)
    Organization.objects.filter(pk=other_organization.pk).update(max_concurrency=6)
    for tenant in (organization, other_organization, third):
        for name in ("a", "b"):
            source = make_source(tenant, name=f"{tenant.slug}-{name}")
            destination, _ = make_destination(tenant, httpserver.url_for(f"/{tenant.slug}"), sources=[source])
            Destination.objects.filter(pk=destination.pk).update(max_concurrency=50)
            ingest_many(client, source, 10, prefix=f"{tenant.slug}-{name}")

    claimed = delivery_service.claim_due_deliveries(30)
    by_organization = Counter(delivery.organization_id for delivery in claimed)
    assert by_organization == {organization.pk: 2, other_organization.pk: 6, third.pk: 4}
    # All three at their caps: nothing more is claimed, however many slots are free.
    assert delivery_service.claim_due_deliveries(30) == []

    # An organization's cap emptied again is the platform's: the large tenant, 6 in flight, has none
    # left, and the noisy one, 2, gets 2 more.
    Organization.objects.filter(pk__in=[organization.pk, other_organization.pk]).update(max_concurrency=None)
    again = delivery_service.claim_due_deliveries(30)
    assert Counter(delivery.organization_id for delivery in again) == {organization.pk: 2}


def _a_tenant_in_flight_behind_a_backlog(client, organization, other_organization, httpserver):
    """The setting of the look beyond the backlog (as in
    test_a_tenant_at_its_limit_found_only_beyond_the_backlog_does_not_fill_the_look): one of
    ``organization``'s destinations fills the first look with a backlog it has no room for;
    ``other_organization`` has one send in flight and, waiting longest after the backlog, two more
    destinations with a due delivery each; a third tenant's delivery is due last."""
    from organizations.services import organization_create

    backlog_source = make_source(organization, name="backlog")
    backlog, _ = make_destination(organization, httpserver.url_for("/backlog"), sources=[backlog_source])
    Destination.objects.filter(pk=backlog.pk).update(max_concurrency=1)
    ingest_many(client, backlog_source, 9, prefix="backlog")
    assert [d.destination_id for d in delivery_service.claim_due_deliveries(1)] == [backlog.pk]
    theirs = []
    for name in ("theirs-a", "theirs-b", "theirs-c"):
        source = make_source(other_organization, name=name)
        theirs.append(make_destination(other_organization, httpserver.url_for(f"/{name}"), sources=[source])[0])
        ingest_many(client, source, 1, prefix=name)
    assert [d.destination_id for d in delivery_service.claim_due_deliveries(1)] == [theirs[0].pk]
    third = organization_create(name="Initech", slug="initech", owner_email="owner@initech.example")
    quiet_source = make_source(third, name="quiet")
    quiet, _ = make_destination(third, httpserver.url_for("/quiet"), sources=[quiet_source])
    ingest_many(client, quiet_source, 1, prefix="quiet")
    return theirs, quiet


def test_beyond_the_backlog_an_organization_at_its_own_lower_cap_is_passed_over(
    client, organization, other_organization, httpserver, settings
):
    # Its one send in flight is its own cap, not the platform's (5): its destinations waiting
    # longest, locked for no send, took the look and the third tenant's delivery waited.
    settings.ORGANIZATION_MAX_CONCURRENCY = 5
    Organization.objects.filter(pk=other_organization.pk).update(max_concurrency=1)
    _, quiet = _a_tenant_in_flight_behind_a_backlog(client, organization, other_organization, httpserver)

    claimed = delivery_service.claim_due_deliveries(2)
    assert [d.destination_id for d in claimed] == [quiet.pk]


def test_beyond_the_backlog_an_organization_below_its_own_higher_cap_is_claimed_for(
    client, organization, other_organization, httpserver, settings
):
    # Its one send in flight is the platform's cap (1), not its own (3): it still has room for its
    # two destinations waiting longest, which are claimed before the third tenant's newer delivery.
    settings.ORGANIZATION_MAX_CONCURRENCY = 1
    Organization.objects.filter(pk=other_organization.pk).update(max_concurrency=3)
    theirs, _ = _a_tenant_in_flight_behind_a_backlog(client, organization, other_organization, httpserver)

    claimed = delivery_service.claim_due_deliveries(2)
    assert sorted(d.destination_id for d in claimed) == [theirs[1].pk, theirs[2].pk]


def test_organizations_own_caps_cost_the_claim_no_query_per_organization(
    client, organization, other_organization, httpserver, settings
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from organizations.services import organization_create

    settings.ORGANIZATION_MAX_CONCURRENCY = 4

    def claim_queries(tenants, round_: str) -> int:
        for tenant in tenants:
            source = make_source(tenant, name=f"{tenant.slug}-{round_}")
            make_destination(tenant, httpserver.url_for(f"/{tenant.slug}"), sources=[source])
            ingest_many(client, source, 3, prefix=f"{tenant.slug}-{round_}")
        with CaptureQueriesContext(connection) as queries:
            claimed = delivery_service.claim_due_deliveries(30)
        assert len(claimed) == 3 * len(tenants)
        return len(queries)

    Organization.objects.filter(pk=organization.pk).update(max_concurrency=6)
    one = claim_queries([organization], "one")
    Delivery.objects.all().delete()
    Organization.objects.filter(pk=organization.pk).update(max_concurrency=None)
    Organization.objects.filter(pk=other_organization.pk).update(max_concurrency=5)
    third = organization_create(name="Initech", slug="initech", owner_email="owner@initech.example")
    assert claim_queries([organization, other_organization, third], "three") == one


def test_behind_a_backlog_the_destination_waiting_longest_is_served_first(client, organization, httpserver):
    # Destinations created in this order: the fallback used to take them by id, so busy ones
    # with fresh deliveries kept every slot the backlog left, round after round.
    now = timezone.now()
    due = {}
    for name, count, waited in (("backlog", 12, timedelta(hours=1)), ("busy", 2, timedelta(seconds=1))):
        source = make_source(organization, name=name)
        destination, _ = make_destination(organization, httpserver.url_for(f"/{name}"), sources=[source])
        ingest_many(client, source, count, prefix=name)
        due[name] = destination
        Delivery.objects.filter(destination=destination).update(next_attempt_at=now - waited)
    source = make_source(organization, name="late")
    due["late"], _ = make_destination(organization, httpserver.url_for("/late"), sources=[source])
    ingest_many(client, source, 1, prefix="late")
    Delivery.objects.filter(destination=due["late"]).update(next_attempt_at=now - timedelta(minutes=30))
    Destination.objects.filter(pk=due["backlog"].pk).update(max_concurrency=1)

    # 2 slots: the first look (8 candidates) sees only the backlog, which may take 1.
    claimed = delivery_service.claim_due_deliveries(2, now=now)
    assert sorted(d.destination.url.rsplit("/", 1)[1] for d in claimed) == ["backlog", "late"]


def test_a_recording_that_fails_late_is_redone_and_leaves_nothing_in_flight(
    client, organization, httpserver, monkeypatch
):
    from django.db import OperationalError

    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/ok"), sources=[source])
    httpserver.expect_request("/ok").respond_with_data("ok")
    ingest_many(client, source, 2)
    claimed = delivery_service.claim_due_deliveries(10)
    results = [(d, delivery_service.send(d)) for d in claimed]

    real, calls = delivery_service._update_destination_health, []

    def deadlocked_once(*args):
        calls.append(1)
        if len(calls) == 1:  # after the attempts and the deliveries' UPDATE, inside the same transaction
            raise OperationalError("deadlock detected")
        return real(*args)

    monkeypatch.setattr(delivery_service, "_update_destination_health", deadlocked_once)
    delivery_service.record_results(results)
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    assert DeliveryAttempt.objects.count() == 2  # the rolled-back first try left no attempt behind


@pytest.mark.django_db(transaction=True)  # the foreign keys are checked at commit, as in production
def test_deliveries_deleted_while_being_sent_are_dropped_quietly_and_the_rest_recorded(
    client, organization, httpserver, caplog
):
    # Deleting a source (so its events and deliveries) while they are on the wire is an ordinary action.
    doomed_source = make_source(organization, name="doomed")
    kept_source = make_source(organization, name="kept", secret="whsec_kept_secret")
    make_destination(organization, httpserver.url_for("/hook"), sources=[doomed_source, kept_source])
    httpserver.expect_request("/hook").respond_with_data("ok")
    ingest_many(client, doomed_source, 2)
    kept_body = '{"id":"evt_kept","object":"event","type":"invoice.paid"}'
    assert post_stripe(client, kept_source, kept_body, "whsec_kept_secret").status_code == 200
    processing.process_received_events()
    claimed = delivery_service.claim_due_deliveries(10)
    assert len(claimed) == 3
    sent = [(d, delivery_service.send(d)) for d in claimed]
    doomed_source.delete()

    with caplog.at_level(logging.INFO, logger="webhooks.services.delivery"):
        recorded = delivery_service.record_results(sent)
    assert [d.event.provider_event_id for d in recorded] == ["evt_kept"]
    assert Delivery.objects.get().status == Delivery.Status.SUCCEEDED
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert sum("was deleted while being sent" in record.getMessage() for record in caplog.records) == 2


@pytest.mark.django_db(transaction=True)
def test_a_destination_deleted_while_its_failing_delivery_is_sent_leaves_the_rest_recorded(
    client, organization, httpserver, caplog
):
    # Deleting a destination from the dashboard while one of its attempts is on the wire: its
    # failed answer has no destination left to count against, and the other results of the batch
    # must still be recorded (else they stay in flight and are sent again).
    source = make_source(organization)
    doomed, _ = make_destination(organization, httpserver.url_for("/doomed"), sources=[source])
    make_destination(organization, httpserver.url_for("/kept"), sources=[source])
    httpserver.expect_request("/doomed").respond_with_data("no", status=500)
    httpserver.expect_request("/kept").respond_with_data("ok")
    ingest_many(client, source, 1)
    claimed = delivery_service.claim_due_deliveries(10)
    assert len(claimed) == 2
    sent = [(d, delivery_service.send(d)) for d in claimed]
    doomed.delete()

    with caplog.at_level(logging.INFO, logger="webhooks.services.delivery"):
        recorded = delivery_service.record_results(sent)
    assert [d.destination.url for d in recorded] == [httpserver.url_for("/kept")]
    assert Delivery.objects.get().status == Delivery.Status.SUCCEEDED
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_manual_retry_is_an_attempt_on_top_of_the_schedule(client, organization, httpserver, settings):
    # A failing "Retry now" must not move the delivery a step closer to dead.
    settings.DELIVERY_RETRY_SCHEDULE = [60, 3600]
    httpserver.expect_request("/hook").respond_with_data("down", status=503)
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest_many(client, source, 1)
    delivery = deliver_now(Delivery.objects.get().pk)  # automatic attempt 1: retry in ~60 s
    assert delivery.status == Delivery.Status.PENDING

    retried = delivery_service.delivery_retry(delivery=delivery)
    after_manual = deliver_now(retried.pk)  # the manual attempt fails too
    assert (after_manual.attempt_count, after_manual.manual_attempts) == (2, 1)
    wait = (after_manual.next_attempt_at - timezone.now()).total_seconds()
    assert 50 < wait < 70, wait  # still the first step of the schedule, not the second (3600 s)

    # The schedule's own attempts still end it: attempt 2 of the schedule, then dead.
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert deliver_now(delivery.pk).status == Delivery.Status.PENDING  # retry in ~3600 s
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    dead = deliver_now(delivery.pk)
    assert dead.status == Delivery.Status.DEAD and "no retries left" in dead.last_error
    # A dead delivery retried by hand gets exactly one attempt.
    again = deliver_now(delivery_service.delivery_retry(delivery=dead).pk)
    assert again.status == Delivery.Status.DEAD and again.attempt_count == 5


@contextlib.contextmanager
def broker_unreachable():
    """Publishing fails as with Redis down: the broker URL points at a closed port. Kombu gives up on
    it at the first refusal instead of retrying the connection for seconds (a failure either way)."""
    from config.celery import app

    saved, saved_options = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app.conf.broker_transport_options = {**saved_options, "max_retries": 0}
    app._pool = app.amqp._producer_pool = None
    try:
        yield
    finally:
        app.conf.broker_url, app.conf.broker_transport_options = saved, saved_options
        app._pool = app.amqp._producer_pool = None


@pytest.fixture
def dead_delivery_world(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/b"), sources=[source])
    httpserver.expect_request("/b").respond_with_data("no", status=400)
    ingest_many(client, source, 2)
    delivery_service.dispatch_due_deliveries(threads=2)
    assert Delivery.objects.filter(status="dead").count() == 2
    return source


def test_a_bulk_retry_asked_while_the_broker_is_down_is_kept_and_run_once_the_sweeper_finds_it(
    organization, dead_delivery_world, django_capture_on_commit_callbacks, monkeypatch
):
    with broker_unreachable(), django_capture_on_commit_callbacks(execute=True):
        job = operations.bulk_retry_start(organization=organization, filters={"statuses": ["dead"]})
    assert BulkRetry.objects.get(pk=job.pk).status == BulkRetry.Status.QUEUED  # asked, and not lost
    published = []
    monkeypatch.setattr(operations, "publish_bulk_retry", published.append)
    assert processing.sweep()["bulk_retries"] == 0  # its own message may still be on its way
    later = timezone.now() + operations.BULK_RETRY_STALLED_AFTER + timedelta(seconds=1)
    assert processing.sweep(now=later)["bulk_retries"] == 1 and published == [job.pk]

    assert operations.bulk_retry_run(job.pk).status == BulkRetry.Status.DONE
    assert Delivery.objects.filter(status="pending").count() == 2
    # The request's own message arriving late runs nothing twice.
    Delivery.objects.update(status="dead")
    assert operations.bulk_retry_run(job.pk).retried == 2
    assert Delivery.objects.filter(status="dead").count() == 2
    assert processing.sweep(now=later + timedelta(hours=1))["bulk_retries"] == 0


def test_a_bulk_retry_whose_worker_died_is_taken_over_but_a_live_one_is_left_alone(
    organization, dead_delivery_world, monkeypatch
):
    job = operations.bulk_retry_start(organization=organization, filters={"statuses": ["dead"]})
    published = []
    monkeypatch.setattr(operations, "publish_bulk_retry", published.append)
    a_minute_ago = timezone.now() - timedelta(minutes=1)
    BulkRetry.objects.filter(pk=job.pk).update(status=BulkRetry.Status.RUNNING, heartbeat_at=a_minute_ago)
    assert processing.sweep()["bulk_retries"] == 0
    assert operations.bulk_retry_run(job.pk).retried == 0  # another run is at it
    assert Delivery.objects.filter(status="dead").count() == 2

    BulkRetry.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=6))
    assert processing.sweep()["bulk_retries"] == 1 and published == [job.pk]
    job = operations.bulk_retry_run(job.pk)
    assert (job.status, job.retried) == (BulkRetry.Status.DONE, 2)
    assert Delivery.objects.filter(status="pending").count() == 2


def test_deliveries_of_a_destination_turned_inactive_are_dead_lettered_not_left_waiting(client, organization):
    # Inactive means "send nothing there": its deliveries were never claimed, never dead, and
    # kept their events past retention.
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/off", sources=[source])
    kept, _ = make_destination(organization, "http://127.0.0.1:9/on", sources=[source])
    ingest_many(client, source, 2)
    Destination.objects.filter(pk=destination.pk).update(is_active=False)

    assert processing.sweep()["inactive"] == 2
    dead = Delivery.objects.filter(destination=destination)
    assert set(dead.values_list("status", flat=True)) == {"dead"}
    assert dead.first().last_error == delivery_service.INACTIVE_DESTINATION_ERROR
    assert set(Delivery.objects.filter(destination=kept).values_list("status", flat=True)) == {"pending"}
    assert processing.sweep()["inactive"] == 0
    # Nobody is mailed that they "failed", and they cannot be retried while it stays inactive.
    from webhooks.services.alerts import send_dead_letter_digests

    assert send_dead_letter_digests() == 0 and mail.outbox == []
    with pytest.raises(delivery_service.DeliveryRetryError, match="inactive"):
        delivery_service.delivery_retry(delivery=dead.first())
    with pytest.raises(operations.OperationError, match="nothing to retry"):
        operations.bulk_retry_start(organization=organization, filters={"destination": destination.pk})
    from webhooks.services.destinations import destination_bulk_retry

    with pytest.raises(operations.OperationError, match="destination is inactive"):
        destination_bulk_retry(destination=Destination.objects.get(pk=destination.pk))
    with pytest.raises(operations.OperationError, match="inactive"):
        operations.event_replay(event=dead.first().event, destination=Destination.objects.get(pk=destination.pk))
    # Once active again, they can be retried like any dead delivery.
    Destination.objects.filter(pk=destination.pk).update(is_active=True)
    job = operations.bulk_retry_start(organization=organization, filters={"destination": destination.pk})
    assert operations.bulk_retry_run(job.pk).retried == 2


def test_a_bulk_retry_left_running_by_older_code_is_not_taken_over_at_once(
    organization, dead_delivery_world, monkeypatch
):
    # Code from before heartbeats marks a job running and never beats: it counts as beating
    # from when it was asked for, so a deploy does not start a second run beside it.
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    job = operations.bulk_retry_start(organization=organization, filters={"statuses": ["dead"]})
    BulkRetry.objects.filter(pk=job.pk).update(status=BulkRetry.Status.RUNNING)
    assert processing.sweep()["bulk_retries"] == 0
    assert operations.bulk_retry_run(job.pk).retried == 0
    Delivery.objects.update(created_at=timezone.now() - timedelta(minutes=7))  # asked for after them
    BulkRetry.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    assert processing.sweep()["bulk_retries"] == 1
    assert operations.bulk_retry_run(job.pk).retried == 2


def test_a_bulk_retry_run_that_was_taken_over_stops_instead_of_running_beside_its_successor(
    organization, dead_delivery_world, monkeypatch
):
    job = operations.bulk_retry_start(organization=organization, filters={"statuses": ["dead"]})
    monkeypatch.setattr(operations, "BULK_RETRY_BATCH", 1)

    def taken_over_after_the_first_batch(slot=0):
        # Thought stalled: another run took the job with a heartbeat of its own.
        BulkRetry.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() + timedelta(seconds=5))

    monkeypatch.setattr(operations, "schedule_dispatch", taken_over_after_the_first_batch)
    stopped = operations.bulk_retry_run(job.pk)
    assert (stopped.status, stopped.retried) == (BulkRetry.Status.RUNNING, 1)
    assert Delivery.objects.filter(status="dead").count() == 1  # the second batch was left to the successor


# --- One attempt row per send, kept by the database too ------------------------------------------------


def test_a_send_recorded_past_every_check_still_leaves_one_attempt(client, organization, httpserver, monkeypatch):
    # Should the recording ever miss that a send is on record, the constraint keeps the first row
    # and the recording goes through, rather than failing and leaving the delivery in flight.
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/down"), sources=[source])
    httpserver.expect_request("/down").respond_with_data("down", status=500)
    ingest_many(client, source, 1)
    (claimed,) = delivery_service.claim_due_deliveries(1)
    held_by_the_caller = Delivery.objects.select_related("event", "destination").get(pk=claimed.pk)
    result = delivery_service.send(claimed)
    delivery_service.record_results([(claimed, result)])
    first = DeliveryAttempt.objects.get()

    monkeypatch.setattr(delivery_service, "_attempts_on_record", lambda deliveries: set())
    delivery_service.record_results([(held_by_the_caller, result)])

    assert list(DeliveryAttempt.objects.values_list("id", flat=True)) == [first.id]
    with pytest.raises(IntegrityError):
        DeliveryAttempt.objects.create(
            organization=organization, delivery_id=claimed.pk, attempt_number=first.attempt_number
        )


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_the_earliest_of_attempts_written_twice(client, organization, httpserver):
    import importlib

    from django.apps import apps
    from django.db import connection

    migration = importlib.import_module("webhooks.migrations.0016_attempt_delivery_number_unique")
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    ingest_many(client, source, 1)
    processing.process_received_events()
    delivery = Delivery.objects.get()
    with connection.schema_editor(atomic=False) as editor:
        editor.remove_constraint(DeliveryAttempt, migration.CONSTRAINT)
    try:
        # As a lost COMMIT reply left them before recording was made idempotent.
        written = [
            DeliveryAttempt.objects.create(organization=organization, delivery=delivery, attempt_number=number)
            for number in (1, 1, 2, 1)
        ]
    finally:
        with connection.schema_editor(atomic=False) as editor:
            migration.add_constraint(apps, editor)
    kept = sorted(DeliveryAttempt.objects.values_list("attempt_number", "id"))
    assert kept == [(1, written[0].id), (2, written[2].id)]
    with pytest.raises(IntegrityError), transaction.atomic():
        DeliveryAttempt.objects.create(organization=organization, delivery=delivery, attempt_number=2)
    with connection.schema_editor(atomic=False) as editor:  # run again: nothing to do
        migration.add_constraint(apps, editor)
