"""Deleting a destination while deliveries for it are being created: neither side fails, nothing dangles.

The deletion is asked for (destination_delete: one short transaction that marks it) and then run in
batches in the background (destination_deletion_run); both halves meet the fan-out, replays and the
dispatcher here."""

import json
import threading

import pytest
from django.db import DatabaseError, IntegrityError, connections, transaction

from webhooks.api import views as api_views
from webhooks.models import Delivery, DeliveryAttempt, Destination, Source, WebhookEvent
from webhooks.services import batched_deletion, destination_deletion, operations, processing, row_locks
from webhooks.services import delivery as delivery_service
from webhooks.services.destination_deletion import destination_deletion_run
from webhooks.services.destinations import destination_delete

from .api_helpers import api_post, make_key
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    for module in (processing, delivery_service, operations):
        monkeypatch.setattr(module, "schedule_dispatch", lambda slot=0: None)
    # The tests run the deletion's batches themselves (delete_in_full).
    monkeypatch.setattr(destination_deletion, "publish_destination_deletion", lambda destination_id: True)


def delete_in_full(destination) -> None:
    """Ask for the deletion, then run it to the end, as the background task does."""
    destination_delete(destination=destination)
    assert destination_deletion_run(destination_id=destination.pk, batch_size=1).finished


@pytest.fixture
def routed(client, organization):
    source = make_source(organization)
    kept, _ = make_destination(organization, "http://127.0.0.1:9/kept", sources=[source])
    doomed, _ = make_destination(organization, "http://127.0.0.1:9/doomed", sources=[source])
    body = '{"id":"evt_race_1","object":"event","type":"invoice.paid"}'
    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    return kept, doomed


class Paused:
    """Runs ``target`` in a thread that stops where ``pause`` is called, until released."""

    def __init__(self, target):
        self.reached, self.released, self.errors = threading.Event(), threading.Event(), []
        self.thread = threading.Thread(target=self._run, args=(target,))

    def pause(self):
        if threading.current_thread() is self.thread:
            self.reached.set()
            assert self.released.wait(10)

    def _run(self, target):
        try:
            target()
        except Exception as exc:
            self.errors.append(exc)
        finally:
            connections.close_all()


def run_alongside(paused: Paused, other_target) -> list:
    """Start ``paused``, wait until it holds its locks, then run ``other_target``, which must wait for it."""
    paused.thread.start()
    assert paused.reached.wait(10)
    other = Paused(other_target)
    other.thread.start()
    other.thread.join(0.5)
    assert other.thread.is_alive(), "the second transaction did not wait for the first one's locks"
    paused.released.set()
    paused.thread.join(10)
    other.thread.join(10)
    return paused.errors + other.errors


def test_a_fan_out_that_read_its_subscriptions_before_a_deletion_skips_the_deleted_destination(routed, monkeypatch):
    kept, doomed = routed
    real_lock = processing.lock_destinations_against_deletion
    fan_out = Paused(processing.process_event_batch)

    def pause_then_lock(destination_ids):
        destination_ids = list(destination_ids)
        fan_out.pause()  # subscriptions read (both destinations), nothing locked yet
        return real_lock(destination_ids)

    monkeypatch.setattr(processing, "lock_destinations_against_deletion", pause_then_lock)
    fan_out.thread.start()
    assert fan_out.reached.wait(10)
    destination_delete(destination=doomed)  # holds nothing the fan-out has: does not wait
    fan_out.released.set()
    fan_out.thread.join(10)
    assert fan_out.errors == []

    # Left out by the fan-out: being deleted, not just gone.
    assert Destination.objects.get(pk=doomed.pk).being_deleted
    assert list(Delivery.objects.values_list("destination_id", flat=True)) == [kept.pk]
    assert WebhookEvent.objects.get().status == WebhookEvent.Status.PROCESSED
    assert destination_deletion_run(destination_id=doomed.pk).finished
    assert not Destination.objects.filter(pk=doomed.pk).exists()


def test_events_arriving_while_the_history_is_deleted_get_no_delivery_to_it(client, routed, monkeypatch):
    # Events keep arriving for the source while the destination's (possibly long) history is
    # deleted in batches: their fan-out neither waits for a batch nor makes deliveries for it.
    kept, doomed = routed
    processing.process_event_batch()  # one delivery each: the history
    destination_delete(destination=doomed)
    real_check = batched_deletion.check_foreign_keys
    more = []

    source = Source.objects.get()

    def arrive_and_fan_out():
        # Another process's work: its own connection, committed while a batch is under way.
        body = json.dumps({"id": "evt_more", "object": "event", "type": "invoice.paid"})
        try:
            assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
            more.append(processing.process_event_batch())
        finally:
            connections.close_all()

    def fan_out_then_check(*args, **kwargs):
        if not more:  # inside the first batch's transaction, its deliveries locked and deleted
            worker = threading.Thread(target=arrive_and_fan_out)
            worker.start()
            worker.join(10)
            assert not worker.is_alive(), "fan-out waited for the history's deletion"
        return real_check(*args, **kwargs)

    monkeypatch.setattr(batched_deletion, "check_foreign_keys", fan_out_then_check)
    assert destination_deletion_run(destination_id=doomed.pk).finished

    assert more == [1]  # the new event was fanned out meanwhile, to the kept destination alone
    assert not Destination.objects.filter(pk=doomed.pk).exists()
    assert list(Delivery.objects.values_list("destination_id", flat=True)) == [kept.pk, kept.pk]


def test_a_deletion_that_fails_changes_nothing(routed, monkeypatch):
    kept, doomed = routed
    processing.process_event_batch()

    def failing(*args, **kwargs):
        raise DatabaseError("canceling statement due to lock timeout")

    # The request: its audit entry is written last, in its transaction.
    with monkeypatch.context() as patched:
        patched.setattr(destination_deletion, "audit_record", failing)
        with pytest.raises(DatabaseError):
            destination_delete(destination=doomed)
    doomed.refresh_from_db()
    assert doomed.is_active is True and not doomed.being_deleted
    assert Delivery.objects.filter(destination=doomed).count() == 1

    # A batch of the run: rolled back whole, its progress with it.
    destination_delete(destination=doomed)
    with monkeypatch.context() as patched:
        patched.setattr(batched_deletion, "check_foreign_keys", failing)
        with pytest.raises(DatabaseError):
            destination_deletion_run(destination_id=doomed.pk)
    doomed.refresh_from_db()
    assert doomed.deletion_progress is None
    assert Delivery.objects.filter(destination=doomed).count() == 1
    assert DeliveryAttempt.objects.count() == 0 and Delivery.objects.count() == 2


def test_a_deletion_during_fan_out_waits_and_takes_the_new_deliveries_along(routed, monkeypatch):
    kept, doomed = routed
    real_record_usage = processing.record_usage
    fan_out = Paused(processing.process_event_batch)

    def record_usage_then_pause(events):
        real_record_usage(events)
        fan_out.pause()  # both deliveries are inserted, not yet committed

    monkeypatch.setattr(processing, "record_usage", record_usage_then_pause)
    # The request waits for the fan-out's lock (FOR KEY SHARE), then marks the destination.
    assert run_alongside(fan_out, lambda: destination_delete(destination=doomed)) == []
    assert Destination.objects.get(pk=doomed.pk).being_deleted

    assert destination_deletion_run(destination_id=doomed.pk).finished
    assert not Destination.objects.filter(pk=doomed.pk).exists()
    assert list(Delivery.objects.values_list("destination_id", flat=True)) == [kept.pk]


def test_replaying_to_a_destination_deleted_meanwhile_is_refused_with_a_reason(routed):
    kept, doomed = routed
    processing.process_event_batch()
    event = WebhookEvent.objects.get()
    stale = Destination.objects.get(pk=doomed.pk)
    destination_delete(destination=doomed)
    with pytest.raises(operations.OperationError, match="the destination is being deleted"):
        operations.event_replay(event=event, destination=stale)
    assert Delivery.objects.filter(destination=doomed).count() == 1  # the fan-out's, none more
    assert destination_deletion_run(destination_id=doomed.pk).finished
    with pytest.raises(operations.OperationError, match="the destination has been deleted"):
        operations.event_replay(event=event, destination=stale)
    assert list(Delivery.objects.values_list("destination_id", flat=True)) == [kept.pk]


def test_deleting_a_destination_twice_is_audited_once(routed, organization):
    from organizations.models import AuditLog

    _, doomed = routed
    stale = Destination.objects.get(pk=doomed.pk)
    assert destination_delete(destination=doomed) is True
    assert destination_delete(destination=stale) is False
    assert destination_deletion_run(destination_id=doomed.pk).finished
    assert destination_delete(destination=stale) is False  # gone
    assert destination_deletion_run(destination_id=doomed.pk).finished
    assert AuditLog.objects.filter(action="destination.deletion_requested").count() == 1
    assert AuditLog.objects.filter(action="destination.deleted").count() == 1


def test_a_deletion_while_a_failed_attempt_is_recorded_does_not_deadlock(routed, monkeypatch):
    # The dispatcher locks a delivery, then its destination (health); the deletion must not
    # hold the destination while it waits for the delivery (its batches lock deliveries only).
    kept, doomed = routed
    processing.process_event_batch()
    claimed = delivery_service.claim_due_deliveries(10)
    results = [(delivery, delivery_service.send(delivery)) for delivery in claimed]  # port 9: refused
    assert all(sent.response.status is None for _, sent in results)
    real_update_health = delivery_service._update_destination_health
    recording = Paused(lambda: delivery_service.record_results(results))

    def pause_then_update_health(destination_id, successes, now):
        recording.pause()  # the deliveries' rows are updated (locked), the destination not yet
        return real_update_health(destination_id, successes, now)

    monkeypatch.setattr(delivery_service, "_update_destination_health", pause_then_update_health)
    assert run_alongside(recording, lambda: delete_in_full(doomed)) == []

    assert not Destination.objects.filter(pk=doomed.pk).exists()
    kept_delivery = Delivery.objects.get()
    assert (kept_delivery.destination_id, kept_delivery.status) == (kept.pk, Delivery.Status.PENDING)
    assert Destination.objects.get(pk=kept.pk).consecutive_failures == 1


def test_a_replay_and_a_deletion_at_once_do_not_deadlock(routed, monkeypatch):
    # The replay locks the destination and then writes its audit entry; the deletion must not
    # hold the audit log's lock while it waits for the destination.
    kept, doomed = routed
    processing.process_event_batch()
    event = WebhookEvent.objects.get()
    real_lock = operations.lock_destinations_against_deletion
    replay = Paused(lambda: operations.event_replay(event=event, destination=doomed))

    def lock_then_pause(destination_ids):
        locked = real_lock(destination_ids)
        replay.pause()  # the destination is locked, the audit entry not yet written
        return locked

    monkeypatch.setattr(operations, "lock_destinations_against_deletion", lock_then_pause)
    # The request waits for the replay's lock, then marks the destination: the replay's delivery
    # was made before, and goes with the rest.
    assert run_alongside(replay, lambda: destination_delete(destination=doomed)) == []
    assert Delivery.objects.filter(destination=doomed, is_replay=True).count() == 1

    assert destination_deletion_run(destination_id=doomed.pk).finished
    assert not Destination.objects.filter(pk=doomed.pk).exists()
    assert list(Delivery.objects.values_list("destination_id", flat=True)) == [kept.pk]


def test_the_early_foreign_key_check_covers_what_a_deletion_removes_and_nothing_else(routed):
    kept, doomed = routed
    processing.process_event_batch()
    # A delivery left pointing at a deleted destination is caught before the deletion commits.
    with pytest.raises(IntegrityError), transaction.atomic():
        Destination.objects.filter(pk=doomed.pk)._raw_delete(using="default")
        row_locks.check_foreign_keys()
    # A caller's own pending violation elsewhere (events left without their source) stays
    # deferred to its commit, as the caller expects, rather than failing the deletion.
    checked = []
    with pytest.raises(IntegrityError), transaction.atomic():
        Source.objects.all()._raw_delete(using="default")
        row_locks.check_foreign_keys()
        checked.append(True)
    assert checked == [True]  # the commit failed, not the check
    assert Source.objects.exists()


def test_two_bulk_retries_of_a_destination_asked_for_at_once_make_one_job(routed, monkeypatch):
    from webhooks.models import BulkRetry
    from webhooks.services import destinations

    from .dashboard_helpers import dead_delivery

    kept, _ = routed
    dead_delivery(WebhookEvent.objects.get(), kept)
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    real_start = operations.bulk_retry_start

    def start_then_pause(**kwargs):
        job = real_start(**kwargs)
        first.pause()  # its job is created, not committed: the second request must wait, then see it
        return job

    monkeypatch.setattr(operations, "bulk_retry_start", start_then_pause)
    first = Paused(lambda: destinations.destination_bulk_retry(destination=Destination.objects.get(pk=kept.pk)))
    errors = run_alongside(
        first, lambda: destinations.destination_bulk_retry(destination=Destination.objects.get(pk=kept.pk))
    )
    assert len(errors) == 1 and "already queued" in str(errors[0])
    assert BulkRetry.objects.count() == 1


def test_a_bulk_retry_of_every_destination_and_one_of_a_destination_asked_for_at_once_make_one_job(routed, monkeypatch):
    # The REST API's job without a destination takes the dashboard's deliveries too: the two
    # requests are serialized per organization, not per destination.
    from webhooks.models import BulkRetry
    from webhooks.services import destinations

    from .dashboard_helpers import dead_delivery

    kept, _ = routed
    organization = kept.organization
    dead_delivery(WebhookEvent.objects.get(), kept)
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    real_start = operations.bulk_retry_start

    def start_then_pause(**kwargs):
        job = real_start(**kwargs)
        first.pause()
        return job

    monkeypatch.setattr(operations, "bulk_retry_start", start_then_pause)
    first = Paused(lambda: operations.bulk_retry_request(organization=organization, filters={}))
    errors = run_alongside(
        first, lambda: destinations.destination_bulk_retry(destination=Destination.objects.get(pk=kept.pk))
    )
    assert len(errors) == 1 and "a bulk retry of every destination is already queued" in str(errors[0])
    assert BulkRetry.objects.count() == 1


def test_a_result_held_up_by_a_row_lock_lets_the_rest_of_its_batch_be_recorded(routed, monkeypatch):
    # A deletion of many deliveries holds their rows for a long time: the other results of the
    # batch must not stay in flight meanwhile (the sweeper would send them again).
    import psycopg
    from django.db import connection

    kept, doomed = routed
    processing.process_event_batch()
    claimed = delivery_service.claim_due_deliveries(10)
    results = [(delivery, delivery_service.send(delivery)) for delivery in claimed]  # port 9: refused
    held = next(d for d, _ in results if d.destination_id == doomed.pk)
    # The first pass's wait, shortened (the default, 5 s, is bound into _record_results' signature:
    # patching the module's constant alone left each run of this test waiting the full 5 s).
    monkeypatch.setitem(delivery_service._record_results.__kwdefaults__, "lock_timeout", "300ms")
    params = {k: v for k, v in connection.get_connection_params().items() if k != "cursor_factory"}
    with psycopg.connect(**params) as deleting:
        deleting.execute("SELECT 1 FROM webhooks_delivery WHERE id = %s FOR UPDATE", [held.pk])
        recording = Paused(lambda: delivery_service.record_results(results))
        recording.thread.start()
        recording.thread.join(10)
        waited_for_the_lock = recording.thread.is_alive()
        deleting.rollback()
        recording.thread.join(10)
    assert not waited_for_the_lock and recording.errors == []
    statuses = dict(Delivery.objects.values_list("destination_id", "status"))
    assert statuses[kept.pk] == Delivery.Status.PENDING  # recorded: a failed attempt, retry scheduled
    assert statuses[doomed.pk] == Delivery.Status.IN_FLIGHT  # left to the sweeper
    assert not DeliveryAttempt.objects.filter(delivery_id=held.pk).exists()  # no second wait to store it bare


def test_a_claim_under_way_makes_the_request_wait_and_its_claimed_deliveries_go_with_the_rest(routed, monkeypatch):
    # A claim locks the destinations it takes deliveries of (FOR NO KEY UPDATE); the request,
    # which takes FOR UPDATE, waits for it. What the claim took was claimed before the deletion was
    # asked for: it is sent, and its result, recorded after its batch deleted it, is dropped.
    kept, doomed = routed
    processing.process_event_batch()
    real_lock = delivery_service._lock_destinations
    claimed = []
    claim = Paused(lambda: claimed.extend(delivery_service.claim_due_deliveries(10)))

    def lock_then_pause(*args, **kwargs):
        in_flight = real_lock(*args, **kwargs)
        claim.pause()  # both destinations locked, nothing claimed yet
        return in_flight

    monkeypatch.setattr(delivery_service, "_lock_destinations", lock_then_pause)
    assert run_alongside(claim, lambda: destination_delete(destination=doomed)) == []
    monkeypatch.setattr(delivery_service, "_lock_destinations", real_lock)
    assert {delivery.destination_id for delivery in claimed} == {kept.pk, doomed.pk}
    assert Destination.objects.get(pk=doomed.pk).being_deleted

    results = [(delivery, delivery_service.send(delivery)) for delivery in claimed]  # port 9: refused
    assert destination_deletion_run(destination_id=doomed.pk).finished  # the in-flight delivery too
    delivery_service.record_results(results)
    kept_delivery = Delivery.objects.get()
    assert (kept_delivery.destination_id, kept_delivery.status) == (kept.pk, Delivery.Status.PENDING)
    assert DeliveryAttempt.objects.filter(delivery=kept_delivery).count() == 1
    assert not Destination.objects.filter(pk=doomed.pk).exists()


def test_a_claim_during_the_request_passes_the_destination_over_and_later_claims_take_nothing_of_it(
    routed, monkeypatch
):
    kept, doomed = routed
    processing.process_event_batch()
    real_audit = destination_deletion.audit_record
    request = Paused(lambda: destination_delete(destination=doomed))

    def pause_then_audit(**kwargs):
        request.pause()  # the destination is locked and marked, not yet committed
        return real_audit(**kwargs)

    monkeypatch.setattr(destination_deletion, "audit_record", pause_then_audit)
    request.thread.start()
    assert request.reached.wait(10)
    # Without waiting for the request (SKIP LOCKED): the other destination's delivery only.
    during = delivery_service.claim_due_deliveries(10)
    request.released.set()
    request.thread.join(10)
    assert request.errors == []
    assert [delivery.destination_id for delivery in during] == [kept.pk]

    assert Destination.objects.get(pk=doomed.pk).being_deleted
    assert delivery_service.claim_due_deliveries(10) == []  # due, but its destination is being deleted
    doomed_delivery = Delivery.objects.get(destination=doomed)
    assert (doomed_delivery.status, doomed_delivery.attempt_count) == (Delivery.Status.PENDING, 0)
    assert destination_deletion_run(destination_id=doomed.pk).finished
    assert list(Delivery.objects.values_list("destination_id", flat=True)) == [kept.pk]


def test_retrying_a_delivery_its_destinations_deletion_removed_meanwhile_is_refused_with_a_reason(routed):
    # Found, then deleted by the deletion's batches before its lock: a refusal, not DoesNotExist.
    _, doomed = routed
    processing.process_event_batch()
    stale = Delivery.objects.get(destination=doomed)
    delete_in_full(doomed)
    with pytest.raises(delivery_service.DeliveryGone, match="no longer exists"):
        delivery_service.delivery_retry(delivery=stale)


def test_the_api_answers_404_for_a_retry_whose_delivery_its_destinations_deletion_removed_meanwhile(
    client, organization, routed, monkeypatch
):
    # Seen with a script: DELETE a destination, then retry one of its dead deliveries at once. The
    # view found the delivery, the worker's batch deleted it before the retry locked it: a 500.
    _, doomed = routed
    processing.process_event_batch()
    delivery = Delivery.objects.get(destination=doomed)
    key = make_key(organization)[1]
    found = api_views.delivery_for_organization

    def found_then_deleted(**kwargs):
        row = found(**kwargs)
        delete_in_full(doomed)
        return row

    monkeypatch.setattr(api_views, "delivery_for_organization", found_then_deleted)
    response = api_post(client, key, f"/api/v1/deliveries/{delivery.pk}/retry")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "not found"}
